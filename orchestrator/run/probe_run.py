"""The probed run (:func:`run_probed`): boot, check the guest before GDB attaches (``pre_attach``),
attach the probe, run a body (a scenario's: :class:`.scenario_body.ScenarioBody`), judge.

Blame: a guest that does not boot is BOOT_FAIL, an oops on the console is
CRASH, a broken host tool is INFRA, a kernel layout the probe does not know is
UNSUPPORTED; only a run that judged traps can PASS or FAIL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.budget import DEFAULT as DEFAULT_BUDGET
from ..core.budget import TrapBudget
from ..core.census import Census
from ..core.errors import (
    KernelCrash,
    PokelabError,
    RunInterrupted,
    Unsupported,
    signal_exception,
)
from ..core.trapdata import INJECT_EVERY
from ..core.verdict import Verdict, decide, interrupted_outcome, probe_blame, verdict_for
from ..gdb.census_tables import load_tables
from ..gdb.ledger import read_trap_log
from ..gdb.probe import Probe
from ..gdb.symbols import KernelSymbolizer, load_symbols
from ..host.cache import cache_dir
from ..kernels.images import KernelArtifacts
from ..machine.vm import Vm, VmSpec

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _crash_titles(vm: Vm) -> list[str]:
    return [c.title for c in vm.crashes()]


def _judge_crashes(vm: Vm, probe: Probe | None, out: dict[str, Any]) -> tuple[list[str], str | None]:
    """The console's crash titles (each once) and, for stall reports under a busy probe, why the probe
    may have caused them (``verdict.probe_blame``); both written into ``out["crashes"]``."""
    found = vm.crashes()
    if not found:
        return [], None
    rate = probe.stop_rate() if probe is not None else None
    blame = probe_blame([c.type for c in found], rate)
    out["crashes"] = [{"type": c.type, "title": c.title, "probe_may_have_caused": blame is not None}
                      for c in found[:10]]
    out["probe_stops_per_s_30s"] = round(rate, 2) if rate is not None else None
    if blame:
        out["crash_attribution"] = blame
    return list(dict.fromkeys(c.title for c in found)), blame


@dataclass
class Run:
    """What the body of a probed run works with: the booted VM, the attached probe, symbols."""

    spec: VmSpec
    kernel: KernelArtifacts
    vm: Vm
    probe: Probe
    sym: KernelSymbolizer
    #: (address, size, name) text symbols of the vmlinux
    symbols: list[tuple[int, int, str]]
    out: dict[str, Any]
    phases: dict[str, float]
    progress: Progress
    #: called once, from the main thread, at the first check after a violation (``--gdb``)
    hold: Callable[[Run], None] | None = None

    def check_alive(self, what: str) -> None:
        """KernelCrash if QEMU is gone or the console shows an oops; ``hold`` after a violation."""
        if self.hold is not None and self.probe.violation_seen.is_set():
            hold, self.hold = self.hold, None
            hold(self)
        titles = _crash_titles(self.vm)
        if self.vm.qemu_exited() or titles:
            raise KernelCrash(f"guest crashed while {what}: " +
                              "; ".join(titles[:2] or [self.vm.qemu_exited() or "?"]))

    def function_range(self, name: str) -> tuple[int, int] | None:
        """[start, end) of a text symbol (the widest of its aliases), or None."""
        addr = self.sym.by_name.get(name)
        if addr is None:
            return None
        size = max((sz for a, sz, _n in self.symbols if a == addr), default=1)
        return addr, addr + max(size, 1)

    def traps_in(self, ranges: list[tuple[int, int]]) -> int:
        return sum(v.traps for s, v in self.probe.sites.items()
                   if any(lo <= s < hi for lo, hi in ranges))


@dataclass
class BodyResult:
    """What the body found: the evidence ``decide`` needs beyond the probe's counts."""

    load_ok: bool = True
    #: traps at the sites that matter (None: all judged traps count)
    floor_count: int | None = None
    floor_what: str = "traps judged"
    #: scenario checks that failed (each one makes the run FAIL)
    failed_checks: list[str] = field(default_factory=list)
    #: scenario checks that could not be made, with the reason (INCONCLUSIVE, never FAIL)
    unknown_checks: list[str] = field(default_factory=list)


Body = Callable[[Run], BodyResult]


class StoppedAtViolation(PokelabError):
    """Raised by a ``hold`` once the person is done with the stopped guest: the run FAILs."""

    verdict = Verdict.FAIL


def stop_for_gdb(run: Run) -> str:
    """Leave the guest stopped with no debugger attached; the gdb command that attaches to it.

    GDB's interrupt stops the guest, QMP ``stop`` keeps it stopped once GDB
    detaches (a gdbstub detach resumes the VM), then the probe's GDB ends.
    """
    vm, probe = run.vm, run.probe
    probe.pause()
    assert vm.qmp is not None
    vm.qmp.cmd("stop")
    probe.close()
    status = vm.qmp.cmd("query-status") or {}
    if status.get("running"):
        vm.qmp.cmd("stop")
    return vm.gdb_command(run.kernel.vmlinux)



def gdb_hold(write: Callable[[str], None]) -> Callable[[Run], None]:
    """``repro --gdb``: stop the guest at the first violation, ``write`` how to attach, wait for Ctrl-C
    (or QEMU's exit); the run then ends FAIL (StoppedAtViolation)."""
    def hold(run: Run) -> None:
        v = (run.probe.violations or [{}])[0]
        line = stop_for_gdb(run)
        for text in (f"violation at {v.get('symbol')}: {v.get('reason')}",
                     "the guest is stopped there, no debugger attached; attach with:", f"  {line}",
                     "Ctrl-C ends the VM"):
            write(text)
        try:
            while not run.vm.qemu_exited():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        raise StoppedAtViolation(f"stopped at the first violation for --gdb ({v.get('reason')})")

    return hold


def run_probed(spec: VmSpec, kernel: KernelArtifacts, out: dict[str, Any], body: Body, *,
               inject: str | None = None, inject_every: int = INJECT_EVERY, min_judged: int = 1,
               pre_attach: Callable[[Vm], None] | None = None,
               progress: Progress = lambda s: None,
               hold: Callable[[Run], None] | None = None,
               budget: TrapBudget = DEFAULT_BUDGET) -> dict[str, Any]:
    """Boot, attach the probe, run ``body``, judge; always returns ``out`` with a verdict.

    The one runner behind every scenario (:func:`.execute.execute`, which writes
    ``verdict.json``): it never raises PokelabError (errors become verdicts by
    blame).  ``pre_attach`` runs on the booted guest before GDB attaches
    (requirement checks, ``RunRequest.baseline_cycles``).  ``hold``
    (``--gdb``) runs at the first ``check_alive`` after a violation and ends
    the body by raising StoppedAtViolation.

    SIGINT (KeyboardInterrupt) or SIGTERM (SystemExit, as the CLI raises it) ends the
    run: GDB and the VM are closed, ``verdict.json`` is written with
    ``"interrupted": true`` and the verdict of what was judged until then
    (``verdict.interrupted_outcome``: never PASS), and RunInterrupted carries it out.
    """
    t0 = time.monotonic()
    interrupted: RunInterrupted | None = None
    out.update({"kernel": kernel.release, "kernel_id": kernel.id, "build_id": kernel.build_id,
                "kernel_package": kernel.package, "kernel_version": kernel.version,
                "accel": spec.accel, "smp": spec.smp, **spec.qemu_record, "inject": inject,
                "artifacts": str(spec.artifacts)})
    wd = spec.watchdogs
    out["watchdogs"] = wd.as_dict() if wd else "kernel defaults"
    out["trap_budget"] = budget.args()
    vm = Vm(spec)
    probe: Probe | None = None
    phases: dict[str, float] = {}
    try:
        t = time.monotonic()
        vm.start()
        vm.wait_ready()
        phases["boot_s"] = time.monotonic() - t
        progress(f"booted {vm.release} in {phases['boot_s']:.1f} s")
        if pre_attach is not None:
            pre_attach(vm)
        t = time.monotonic()
        symbols = load_symbols(kernel.system_map, kernel.vmlinux, cache_dir(), kernel.build_id)
        sym = KernelSymbolizer(
            symbols,
            load_symbols(kernel.system_map, kernel.vmlinux, cache_dir(), kernel.build_id,
                         types=set("dDbB")))
        tables = load_tables(kernel.vmlinux, kernel.system_map, cache_dir(), kernel.build_id)
        probe = Probe(kernel.vmlinux, vm.gdb_address, spec.artifacts, sym,
                      vm.timeouts.get("gdb_command"), inject=inject,
                      inject_every=inject_every, hardware=spec.accel == "kvm", census=Census(tables),
                      budget=budget)
        probe.attach()
        phases["attach_s"] = time.monotonic() - t
        progress(f"probe attached to {probe.setup_info.get('handler')} in {phases['attach_s']:.1f} s")
        run = Run(spec, kernel, vm, probe, sym, symbols, out, phases, progress, hold)
        t = time.monotonic()
        res = body(run)
        phases["body_s"] = time.monotonic() - t
        stats = probe.recorder_stats()
        probe.finish()
        summary = probe.summary()
        mismatched = [{"site": f"{tc.site:#x}", "name": tc.name, "reason": tc.reason,
                       "read": tc.bytes_read} for tc in probe.text_checks if not tc.ok]
        summary["text_mismatches"] = len(mismatched)
        out["text_mismatch_examples"] = mismatched[:5]
        out["text_freed_examples"] = probe.freed_sites[:5]
        out["text_in_flight_examples"] = probe.in_flight_sites[:5]
        out["text_poke_unknown_examples"] = probe.poke_unknown[:5]
        summary["lost"] = int(stats.get("lost", 0))
        summary["recorder"] = stats
        out.update(summary)
        titles, blame = _judge_crashes(vm, probe, out)
        outcome = decide(summary, crashes=titles, min_judged=min_judged,
                         inject=inject, load_ok=res.load_ok, floor_count=res.floor_count,
                         floor_what=res.floor_what, failed_checks=res.failed_checks,
                         unknown_checks=res.unknown_checks, probe_blame=blame)
        out["verdict"], out["reasons"] = outcome.verdict, list(outcome.reasons)
        if inject and outcome.verdict == "FAIL":
            ok = summary["injected_flagged"] == summary["injected"] and summary["false_flags"] == 0
            out["injection_check"] = "every injected trap flagged, no other" if ok else "MISMATCH"
        out["violation_examples"] = probe.violations[:5]
        if phases.get("body_s"):
            out["traps_per_min"] = round(summary["traps_judged"] / phases["body_s"] * 60, 1)
    except PokelabError as exc:
        crashes, blame = _judge_crashes(vm, probe, out)
        sig = None if isinstance(exc, StoppedAtViolation) else signal_exception(exc.__context__)
        if isinstance(exc, StoppedAtViolation):
            out["verdict"], out["reasons"] = verdict_for(exc), [exc.title]
        elif sig is not None:  # a wait broken by SIGINT/SIGTERM: the run was interrupted
            interrupted = _interrupted(sig, out, vm, probe)
        elif crashes and blame and not isinstance(exc, Unsupported):
            out["verdict"], out["reasons"] = "INCONCLUSIVE", ["; ".join(crashes[:3]) + " while " + blame]
        elif crashes and not isinstance(exc, Unsupported):
            # the guest died mid-body: what the probe judged before the oops still counts
            # (a violation seen first makes a FAIL naming the crash, as in ``decide``)
            seen = probe.summary() if probe is not None else {}
            if int(seen.get("violations", 0)):
                outcome = decide(seen, crashes=crashes, inject=inject)
                out["verdict"], out["reasons"] = outcome.verdict, list(outcome.reasons)
            else:
                out["verdict"], out["reasons"] = "CRASH", crashes[:3]
        else:
            out["verdict"], out["reasons"] = verdict_for(exc), [exc.title]
        if probe is not None:
            out.update({k: v for k, v in probe.summary().items() if k not in out})
            out.setdefault("violation_examples", probe.violations[:5])
        if exc.tail and sig is None:
            out["tail"] = exc.tail[-2000:]
    except BaseException as exc:
        sig = signal_exception(exc)
        if sig is None:
            raise
        interrupted = _interrupted(sig, out, vm, probe)
    finally:
        if probe is not None:
            probe.close()
        vm.close()
    phases["total_s"] = time.monotonic() - t0
    out["phases"] = {k: round(v, 2) for k, v in phases.items()}
    out.setdefault("traps_judged", 0)
    out.setdefault("violations", 0)
    if interrupted is not None:
        raise interrupted
    return out


def breakpoint_stops(stats: dict[str, Any]) -> int:
    """The probe's breakpoint hits so far: every stop of the recorder's hooks (handler entries and
    returns, batches and their ends, plain writes); from an older recorder without that count,
    handler entries + returns of a recorded trap + batches."""
    if "stops" in stats:
        return int(stats["stops"])
    return int(stats.get("entries", 0)) + int(stats.get("traps", 0)) + int(stats.get("batches", 0))


def _interrupted(exc: BaseException, out: dict[str, Any], vm: Vm, probe: Probe | None) -> RunInterrupted:
    """Mark ``out`` interrupted, with the verdict of what was judged so far."""
    if isinstance(exc, KeyboardInterrupt):
        code, name = 130, "SIGINT"
    else:
        status = getattr(exc, "code", None)
        code = status if isinstance(status, int) else 143
        name = "SIGTERM" if code == 143 else f"exit {code}"
    summary: dict[str, Any] = probe.summary() if probe is not None else {}
    if probe is not None:
        out.update({k: v for k, v in summary.items() if k not in out})
        out.setdefault("violation_examples", probe.violations[:5])
    try:
        crashes = _crash_titles(vm)
    except Exception:  # the console may be half closed: the verdict must still be written
        crashes = []
    outcome = interrupted_outcome(summary, crashes=crashes, signal_name=name)
    out["verdict"], out["reasons"] = outcome.verdict, list(outcome.reasons)
    out["interrupted"] = True
    return RunInterrupted(out, int(code), name)


def trap_targets(trap_log: str | Path | None) -> list[tuple[str, int]]:
    """(target name, count) of the judged traps in a trap log, most frequent first."""
    counts: dict[str, int] = {}
    for rec in read_trap_log(trap_log):
        if rec.get("kind") == "judged" and rec.get("target"):
            name = rec.get("target_name") or rec["target"]
            counts[name] = counts.get(name, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])
