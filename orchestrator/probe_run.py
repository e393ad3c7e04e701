"""``pokelab probe``: boot, load every vCPU but one with getpid, toggle the function tracer
on ``__do_sys_getpid`` from the remaining one under the probe, judge, summarize.

Blame: a guest that does not boot is BOOT_FAIL, an oops on the console is
CRASH, a broken host tool is INFRA, a kernel layout the probe does not know is
UNSUPPORTED; only a run that judged traps can PASS or FAIL.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ftrace, loadgen
from .cache import cache_dir
from .errors import BootError, InfraError, KernelCrash, PokelabError, Unsupported
from .images import KernelArtifacts
from .probe import Probe
from .symbols import KernelSymbolizer, load_symbols
from .verdict import decide
from .vm import Vm, VmSpec

log = logging.getLogger(__name__)

DEFAULT_FUNCTION = "__do_sys_getpid"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ProbeOptions:
    toggles: int = 10
    function: str = DEFAULT_FUNCTION
    inject: str | None = None
    inject_every: int = 2
    min_judged: int = 1
    #: switches of the tracer to time before the probe attaches (benchmarks only)
    baseline_switches: int = 0


def _crash_titles(vm: Vm) -> list[str]:
    return [c.title for c in vm.crashes()]


def run_probe(spec: VmSpec, kernel: KernelArtifacts, opts: ProbeOptions,
              progress: Progress = lambda s: None) -> dict[str, Any]:
    """One probed run; always returns a summary dict with a verdict (never raises PokelabError)."""
    t0 = time.monotonic()
    out: dict[str, Any] = {"kernel": kernel.release, "kernel_id": kernel.id,
                           "build_id": kernel.build_id, "accel": spec.accel, "smp": spec.smp,
                           "function": opts.function, "toggles": opts.toggles,
                           "inject": opts.inject, "artifacts": str(spec.artifacts)}
    vm = Vm(spec)
    probe: Probe | None = None
    phases: dict[str, float] = {}
    try:
        t = time.monotonic()
        vm.start()
        vm.wait_ready()
        phases["boot_s"] = time.monotonic() - t
        progress(f"booted {vm.release} in {phases['boot_s']:.1f} s")
        if opts.baseline_switches:
            vm.check(loadgen.start_command("getpid", list(range(1, spec.smp)) or [0]))
            ftrace.set_filter(vm, [opts.function])
            times = []
            for i in range(opts.baseline_switches):
                t = time.monotonic()
                ftrace.set_tracer(vm, "function" if i % 2 == 0 else "nop")
                times.append(time.monotonic() - t)
            vm.check(loadgen.STOP_COMMAND)
            out["baseline_switch_s"] = statistics.median(times)
        t = time.monotonic()
        sym = KernelSymbolizer(
            load_symbols(kernel.system_map, kernel.vmlinux, cache_dir(), kernel.build_id),
            load_symbols(kernel.system_map, kernel.vmlinux, cache_dir(), kernel.build_id,
                         types=set("dDbB")))
        probe = Probe(kernel.vmlinux, vm.gdb_address, spec.artifacts, sym,
                      vm.timeouts.get("gdb_command"), inject=opts.inject,
                      inject_every=opts.inject_every, hardware=spec.accel == "kvm")
        probe.attach()
        phases["attach_s"] = time.monotonic() - t
        progress(f"probe attached to {probe.setup_info.get('handler')} in {phases['attach_s']:.1f} s")
        if not ftrace.available(vm, opts.function):
            raise Unsupported(f"{opts.function} is not in available_filter_functions")
        load_cpus = list(range(1, spec.smp)) or [0]
        vm.check(loadgen.start_command("getpid", load_cpus))
        ftrace.set_filter(vm, [opts.function])
        t = time.monotonic()
        per_toggle: list[int] = []
        out["judged_after_toggle"] = per_toggle
        switch_times: list[tuple[float, float, float]] = []  # guest s, host s, read-back s
        out["switch_times"] = switch_times
        for i in range(opts.toggles):
            for tracer in ("function", "nop"):
                t_sw = time.monotonic()
                guest_s = ftrace.set_tracer(vm, tracer)
                t_chk = time.monotonic()
                probe.check_sites()
                switch_times.append((round(guest_s, 3), round(t_chk - t_sw, 3),
                                     round(time.monotonic() - t_chk, 3)))
                if vm.qemu_exited() or _crash_titles(vm):
                    raise KernelCrash("guest crashed while toggling: " +
                                      "; ".join(_crash_titles(vm)[:2] or [vm.qemu_exited() or "?"]))
            per_toggle.append(probe.judged_count())
            progress(f"toggle {i + 1}/{opts.toggles}: {per_toggle[-1]} traps judged")
        phases["toggle_s"] = time.monotonic() - t
        counts = loadgen.parse_counts(vm.check(loadgen.STOP_COMMAND))
        out["load_iterations"] = {str(k): v for k, v in sorted(counts.items())}
        load_ok = all(counts.get(c, 0) > 0 for c in load_cpus)
        stats = probe.recorder_stats()
        probe.finish()
        summary = probe.summary()
        summary["lost"] = int(stats.get("lost", 0))
        summary["recorder"] = stats
        out.update(summary)
        func_addr = sym.by_name.get(opts.function)
        site_traps = sum(v.traps for s, v in probe.sites.items()
                         if func_addr is not None and func_addr <= s < func_addr + 16)
        out["function_site_traps"] = site_traps
        outcome = decide(summary, crashes=_crash_titles(vm), min_judged=opts.min_judged,
                         inject=opts.inject, load_ok=load_ok,
                         floor_count=site_traps if func_addr is not None else None,
                         floor_what=f"trap(s) judged at {opts.function}'s site")
        out["verdict"], out["reasons"] = outcome.verdict, list(outcome.reasons)
        if opts.inject and outcome.verdict == "FAIL":
            ok = summary["injected_flagged"] == summary["injected"] and summary["false_flags"] == 0
            out["injection_check"] = "every injected trap flagged, no other" if ok else "MISMATCH"
        out["violation_examples"] = probe.violations[:5]
        if phases.get("toggle_s"):
            out["traps_per_min"] = round(summary["traps_judged"] / phases["toggle_s"] * 60, 1)
    except PokelabError as exc:
        crashes = _crash_titles(vm)
        if crashes and not isinstance(exc, Unsupported):
            out["verdict"], out["reasons"] = "CRASH", crashes[:3]
        else:
            verdict = {KernelCrash: "CRASH", BootError: "BOOT_FAIL",
                       Unsupported: "UNSUPPORTED"}.get(type(exc), "INFRA")
            out["verdict"], out["reasons"] = verdict, [exc.title]
        if probe is not None:
            out.update({k: v for k, v in probe.summary().items() if k not in out})
        if exc.tail:
            out["tail"] = exc.tail[-2000:]
    finally:
        if probe is not None:
            probe.close()
        vm.close()
    phases["total_s"] = time.monotonic() - t0
    out["phases"] = {k: round(v, 2) for k, v in phases.items()}
    out.setdefault("traps_judged", 0)
    out.setdefault("violations", 0)
    (spec.artifacts / "verdict.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def print_summary(out: dict[str, Any], write: Callable[[str], None]) -> None:
    write(f"verdict: {out['verdict']}  ({'; '.join(out.get('reasons', []))})")
    write(f"kernel {out['kernel']}  traps seen {out.get('traps_seen', 0)}, judged "
          f"{out.get('traps_judged', 0)}, violations {out.get('violations', 0)}, "
          f"not text_poke {out.get('not_text_poke', 0)}")
    if out.get("inject"):
        write(f"injected {out.get('injected', 0)}, flagged {out.get('injected_flagged', 0)}, "
              f"false flags {out.get('false_flags', 0)}")
    for site, info in list((out.get("sites") or {}).items())[:10]:
        write(f"  site {site} {info['name']}: {info['traps']} traps")
    if out.get("opcodes"):
        write("  opcodes: " + ", ".join(f"{k}: {v}" for k, v in out["opcodes"].items()))
    for v in out.get("violation_examples", [])[:3]:
        write(f"  violation at {v.get('symbol')}: {v.get('reason')}")
    if out.get("trap_log"):
        write(f"trap log: {out['trap_log']}")
    write(f"artifacts: {out['artifacts']}")


def write_json(out: dict[str, Any], path: Path | None) -> None:
    if path is None:
        return
    try:
        path.write_text(json.dumps(out, indent=2) + "\n")
    except OSError as exc:
        raise InfraError(f"cannot write {path}: {exc.strerror}") from None
