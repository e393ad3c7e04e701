"""A scenario's part of a probed run (``probe_run.Body``): the load, the steps, the read-backs, the floor.

:class:`ScenarioBody` runs a :class:`.scenario.Scenario`'s setup, steps (``repeat``
cycles) and teardown from vCPU 0 with the load on the others, checks each step's
evidence and site text, and gives ``verdict.decide`` what it found (:class:`.probe_run.BodyResult`).
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.census import static_call_form, static_call_sites
from ..core.errors import InfraError, signal_exception
from ..gdb.readback import TextCheck
from ..kernels import loadgen
from ..machine.vm import Vm
from .probe_run import BodyResult, Run, breakpoint_stops
from .scenario import (
    CALLERS,
    WORKLOAD_GUEST_PATH,
    WORKLOAD_STOP_COMMAND,
    Requirement,
    Scenario,
    Step,
    classify_fentry,
    count_keys,
    guest_check_script,
    parse_kallsyms_address,
    parse_missing,
    parse_workload_states,
    workload_start_command,
)

log = logging.getLogger(__name__)


def present_requirements(vm: Vm, reqs: list[Requirement]) -> list[bool]:
    """For each guest-side requirement: is it met in the guest (config ones: False)."""
    missing = set(parse_missing(vm.check(guest_check_script(reqs))))
    return [r.kind != "config" and str(r) not in missing for r in reqs]


def _guest_symbol(vm: Vm, name: str) -> int | None:
    """A symbol's address from the guest's /proc/kallsyms (module symbols too)."""
    res = vm.run(f"awk '$3 == \"{name}\" {{print $1; exit}}' /proc/kallsyms")
    return parse_kallsyms_address(res.stdout)


# --------------------------------------------------------------------------- declarations



class ScenarioBody:
    """The scenario's part of a probed run (``probe_run.Body``)."""

    def __init__(self, sc: Scenario, workload: Path | None, out: dict[str, Any]) -> None:
        self.sc = sc
        self.workload = workload
        self.out = out
        self.failed: list[str] = []
        #: checks that could not be made (INCONCLUSIVE), with the reason
        self.unknown: list[str] = []
        self.evidence: dict[str, int] = {}
        #: steps whose evidence printed no number at least once: why
        self.evidence_missing: dict[str, str] = {}
        self.evidence_steps: dict[str, Step] = {}
        self.step_log: list[dict[str, Any]] = []
        out["steps"] = self.step_log
        out["evidence"] = self.evidence
        #: the watched body site: (address, "FUNCTION+OFFSET", its bytes before the setup)
        self.body: tuple[int, str, bytes] | None = None

    def expand(self, text: str) -> str:
        text = self.sc.expand(text)
        return text.replace("{body}", self.body[1]) if self.body else text

    def __call__(self, run: Run) -> BodyResult:
        sc, vm = self.sc, run.vm
        cpus = sc.load.cpus(run.spec.smp)
        if not sc.record_batches:
            self.out["batch_recording"] = "off" if run.probe.record_batches(False) else "no hook"
        if sc.watch_body:
            self._find_body(run)
        self._start_load(vm, cpus)
        per_cycle: list[int] = []
        self.out["judged_after_cycle"] = per_cycle
        flushes0, stops0 = vm.tb_flush_count(), breakpoint_stops(run.probe.recorder_stats())
        try:
            for st in sc.setup:
                self._step(run, st, 0)
            t0 = time.monotonic()
            for rep in range(sc.repeat):
                t = time.monotonic()
                for st in sc.steps:
                    self._step(run, st, rep)
                per_cycle.append(run.probe.judged_count())
                run.progress(f"cycle {rep + 1}/{sc.repeat} in {time.monotonic() - t:.1f} s: "
                             f"{per_cycle[-1]} traps judged")
            self.out["cycles_s"] = round(time.monotonic() - t0, 2)  # the repeated steps' wall time
            for st in sc.teardown:
                self._step(run, st, 0)
        except BaseException as exc:
            if signal_exception(exc) is None:  # SIGINT/SIGTERM: the VM is closed next; a guest
                self._stop_load(vm, cpus)      # command could only delay that
            raise
        self._count_stops(run, flushes0, stops0)
        load_ok, load_info = self._stop_load(vm, cpus)
        self.out["load"] = load_info
        self._final(run)
        floor = self._floor(run)
        self.out["floor_traps"] = floor
        if floor is not None and floor >= sc.min_traps:
            self._judge_evidence(floor)
        return BodyResult(load_ok=load_ok, floor_count=floor, floor_what=sc.floor_what(),
                          failed_checks=self.failed, unknown_checks=self.unknown)

    def _count_stops(self, run: Run, flushes0: int | None, stops0: int) -> None:
        """The probe's breakpoint stops over the steps and QEMU's TB flushes meanwhile (``info jit``;
        0 per stop on QEMU 10.2+, ~2 on 7.2: each flush makes the guest re-translate what it runs)."""
        stops = breakpoint_stops(run.probe.recorder_stats()) - stops0
        flushes1 = run.vm.tb_flush_count()
        self.out["probe_stops"] = stops
        if flushes0 is not None and flushes1 is not None:
            self.out["tb_flushes"] = flushes1 - flushes0
            self.out["tb_flushes_per_stop"] = round((flushes1 - flushes0) / stops, 3) if stops else None

    def _judge_evidence(self, floor: int) -> None:
        """Evidence 0 is a FAIL only when the handler had to run whatever the load was."""
        fn = self.sc.function or ""
        for name, n in self.evidence.items():
            if n > 0:
                continue
            if name in self.evidence_missing:
                self.unknown.append(f"step '{name}': its evidence could not be read "
                                    f"({self.evidence_missing[name]})")
            elif "{call}" in str(self.evidence_steps[name].evidence) and fn not in CALLERS:
                self.unknown.append(f"step '{name}': the tracer/handler recorded nothing (evidence 0), "
                                    f"and pokelab has no command that calls {fn}: whether it ran "
                                    f"is unknown (the load may not call it)")
            else:
                self.failed.append(f"step '{name}': the tracer/handler recorded nothing "
                                   f"(evidence count 0) though its sites trapped {floor} time(s)")

    # -- load ---------------------------------------------------------------------
    def _start_load(self, vm: Vm, cpus: list[int]) -> None:
        if self.workload is None:
            vm.check(loadgen.start_command(self.sc.load.path, cpus, pace=self.sc.load.pace))
            return
        vm.ssh.put_file(self.workload, WORKLOAD_GUEST_PATH)
        vm.check(workload_start_command(cpus))

    def _stop_load(self, vm: Vm, cpus: list[int]) -> tuple[bool, dict[str, Any]]:
        if self.workload is None:
            counts = loadgen.parse_counts(vm.check(loadgen.STOP_COMMAND))
            return (all(counts.get(c, 0) > 0 for c in cpus),
                    {"path": self.sc.load.path, "iterations": {str(k): v for k, v in sorted(counts.items())}})
        states = parse_workload_states(vm.run(WORKLOAD_STOP_COMMAND).stdout)
        alive = sum(1 for c in cpus if states.get(c) == "running")
        for c in cpus:
            state = states.get(c)
            if state is None:
                self.unknown.append(f"the workload's state on vCPU {c} is unknown (not started?)")
            elif state not in ("running", "exit 0"):
                self.unknown.append(f"the workload {state} on vCPU {c}: "
                                    f"see /tmp/workload.{c}.out in the guest")
        # a workload that ended with status 0 ran: a finite script is a fine load
        return True, {"workload": str(self.workload), "still_running_at_end": alive, "cpus": cpus,
                      "states": {str(c): states.get(c) for c in cpus}}

    # -- steps ----------------------------------------------------------------------
    def _act(self, vm: Vm, st: Step, on_fail: Callable[[], None]) -> tuple[float, str | None]:
        """Run a step's action from vCPU 0: its host seconds, and why a Python action could not
        be done (None: done).  A failed command: ``on_fail()``, then InfraError."""
        t = time.monotonic()
        if not isinstance(st.action, str):
            not_done = st.action(vm)
            return time.monotonic() - t, not_done or None
        cmd = self.expand(st.action)
        res = vm.run(f"taskset -c 0 sh -c {shlex.quote(cmd)}")
        if res.status != 0:
            on_fail()
            raise InfraError(f"step '{st.name}' failed ({res.status}): {cmd}: "
                             f"{(res.stderr or res.stdout).strip()[-200:]}")
        return time.monotonic() - t, None

    def _evidence(self, vm: Vm, evidence: str) -> tuple[int | None, str]:
        """A step's evidence count (None: the command printed no number) and, for None, why."""
        res = vm.run(f"taskset -c 0 sh -c {shlex.quote(self.expand(evidence))}")
        m = re.search(r"-?\d+", res.stdout)
        if m is not None:
            return int(m.group(0)), ""
        why = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"printed no count, exit {res.status}: {why[0][:120]}"

    def baseline(self, vm: Vm, cycles: int) -> list[dict[str, Any]]:
        """The same steps with no probe attached (``RunRequest.baseline_cycles``, run before GDB attaches):
        the setup, ``cycles`` cycles of the steps and the teardown, under the same load, each timed as
        under the probe (host seconds of its action).  Evidence is read (the guest does the same work)
        but not judged; nothing is read back (there is no probe).  Recorded as ``out["baseline_steps"]``,
        entries as in ``out["steps"]`` (``step``, ``cycle``, ``s``; ``evidence``; ``not_done``).

        Raises InfraError if a step's command fails.
        """
        sc = self.sc
        cpus = sc.load.cpus(vm.spec.smp)
        log_: list[dict[str, Any]] = []
        self.out["baseline_steps"] = log_
        self._start_load(vm, cpus)
        plan = [(st, 0) for st in sc.setup] + [(st, rep) for rep in range(cycles) for st in sc.steps]
        for st, rep in plan + [(st, 0) for st in sc.teardown]:
            seconds, not_done = self._act(vm, st, lambda: None)
            entry: dict[str, Any] = {"step": st.name, "cycle": rep, "s": round(seconds, 3)}
            if not_done:
                entry["not_done"] = not_done
            if st.evidence:
                entry["evidence"] = self._evidence(vm, st.evidence)[0]
            log_.append(entry)
        if self.workload is None:
            vm.check(loadgen.STOP_COMMAND)
        else:
            vm.run(WORKLOAD_STOP_COMMAND)
        return log_

    def _step(self, run: Run, st: Step, rep: int) -> None:
        vm = run.vm
        seconds, not_done = self._act(vm, st, lambda: run.check_alive(f"running step '{st.name}'"))
        if not_done:
            self.unknown.append(f"step '{st.name}': {not_done}")
        entry: dict[str, Any] = {"step": st.name, "cycle": rep, "s": round(seconds, 3)}
        if st.evidence:
            n, why = self._evidence(vm, st.evidence)
            if n is None:
                self.evidence_missing[st.name] = why
            entry["evidence"] = n
            self.evidence[st.name] = self.evidence.get(st.name, 0) + (n or 0)
            self.evidence_steps[st.name] = st
        run.probe.check_sites()
        run.check_alive(f"running step '{st.name}'")
        if st.static_calls:
            entry["static_calls"] = self._check_static_calls(run, st)
        if st.site:
            entry["site"] = self._check_fentry(run, st.site, f"after '{st.name}'", st.target)
        if st.body:
            entry["body"] = self._check_body(run, st.body, f"after '{st.name}'")
        self.step_log.append(entry)

    def _find_body(self, run: Run) -> None:
        fn = self.sc.function or ""
        addr = run.sym.by_name.get(fn)
        if addr is None:
            raise InfraError(f"no symbol {fn} to find its first body instruction")
        with run.probe.paused():
            head = run.probe.read_memory(addr, 9)
            off, state = classify_fentry(head)
            if state != "nop":
                raise InfraError(f"{fn}'s fentry site holds {head[off:off + 5].hex(' ')} before the setup "
                                 "(expected the 5-byte NOP): cannot place the body site")
            site = addr + off + 5
            orig = run.probe.read_memory(site, 5)
        self.body = (site, f"{fn}+{off + 5}", orig)
        self.out["body_site"] = {"address": f"{site:#x}", "spec": self.body[1], "original": orig.hex(" ")}

    def _check_body(self, run: Run, want: str, when: str) -> str:
        """Read the watched body site back: the original bytes, or a JMP32 out of the function."""
        assert self.body is not None
        site, spec, orig = self.body
        with run.probe.paused():
            now = run.probe.read_memory(site, 5)
        desc = f"{spec}: {now.hex(' ')}"
        rng = run.function_range(self.sc.function or "")
        dest: int | None = None
        if now[:1] == b"\xe9":
            dest = site + 5 + int.from_bytes(now[1:5], "little", signed=True)
            desc += f" (jmp {run.sym(dest) or hex(dest)})"
        if want == "original" and now != orig:
            self.failed.append(f"{when}: {spec} holds {now.hex(' ')}, expected its original bytes "
                               f"{orig.hex(' ')}")
        elif want == "jmp":
            inside = rng is not None and dest is not None and rng[0] <= dest < rng[1]
            if dest is None or inside:
                self.failed.append(f"{when}: {spec} holds {now.hex(' ')}, expected a JMP32 (e9) out of "
                                   f"{self.sc.function} (an optprobe detour)")
            elif dest is not None and run.sym(dest) is None:
                self._name_optinsn_page(run, dest)
        return desc

    @staticmethod
    def _name_optinsn_page(run: Run, dest: int) -> None:
        """Name the detour's page if the guest's kallsyms lists it as ``kprobe_optinsn_page``
        (kernel/kprobes.c kprobe_cache_get_kallsym), so traps jumping there are the census's kprobe's."""
        res = run.vm.run("awk '$3 == \"kprobe_optinsn_page\" {print $1}' /proc/kallsyms")
        for word in res.stdout.split():
            page = parse_kallsyms_address(word)
            if page is not None and page <= dest < page + 4096:
                run.sym.add_region("kprobe_optinsn_page", page, 4096)
                return

    def _check_fentry(self, run: Run, want: str, when: str, target: str | None = None) -> str:
        fn = self.sc.function
        addr = run.sym.by_name.get(fn or "")
        if fn is None or addr is None:
            self.failed.append(f"{when}: no symbol {fn} to read its fentry site")
            return "?"
        want_target = _guest_symbol(run.vm, target) if target else None
        with run.probe.paused():
            text = run.probe.read_memory(addr, 9)
        off, state = classify_fentry(text)
        site = text[off:off + 5]
        desc = f"{fn}+{off:#x}: {site.hex(' ')}"
        if state == "call":
            dest = addr + off + 5 + int.from_bytes(site[1:5], "little", signed=True)
            name = target if want_target is not None and dest == want_target else run.sym(dest)
            desc += f" (call {name or hex(dest)})"
            if target and dest != want_target:
                self.failed.append(f"{when}: {fn}'s fentry site calls {name or hex(dest)}, expected "
                                   f"{target} ({hex(want_target) if want_target else 'not in kallsyms'})")
        if want != "any" and state != want:
            expect = "the 5-byte NOP 0f 1f 44 00 00" if want == "nop" else "a call (e8)"
            self.failed.append(f"{when}: {fn}'s fentry site holds {site.hex(' ')}, expected {expect}")
        return desc

    def _check_static_calls(self, run: Run, st: Step) -> dict[str, str]:
        """Read back each static call's ``__SCT__`` trampoline and every inline site (from the census
        tables): each must hold the form the step expects, and a ``func`` form one same function."""
        by_name = run.sym.by_name
        return0 = by_name.get("__static_call_return0")
        thunk = by_name.get("__x86_return_thunk")
        tables = run.probe.census.tables
        plan: list[tuple[str, str, list[int]]] = []
        for name, spec in st.static_calls:
            want = spec.partition(":")[0]
            tramp = by_name.get(f"__SCT__{name}")
            if tramp is None:
                self.failed.append(f"after '{st.name}': no trampoline __SCT__{name} in the vmlinux")
                continue
            plan.append((name, spec, [tramp, *static_call_sites(tables, name)]))
        with run.probe.paused():
            texts = run.probe.read_many([(a, 5) for _n, _w, addrs in plan for a in addrs])
        seen: dict[str, str] = {}
        i = 0
        for name, spec, addrs in plan:
            want, _, func = spec.partition(":")
            forms: dict[str, int] = {}
            targets: set[int] = set()
            bad: list[str] = []
            matched: list[TextCheck] = []
            for k, addr in enumerate(addrs):
                text = texts[i + k] or b""
                form, target = static_call_form(text, addr, return0, thunk)
                forms[form] = forms.get(form, 0) + 1
                if form == want:
                    matched.append(TextCheck(addr, name, True, f"static call {name}: {form}", text.hex()))
                if form == "func" and target is not None:
                    targets.add(target)
                if form != want and len(bad) < 3:
                    where = "__SCT__" + name if k == 0 else (run.sym(addr) or hex(addr))
                    bad.append(f"{where} holds {text.hex(' ') or 'unreadable'} ({form})")
            i += len(addrs)
            run.probe.note_checks(matched)
            shown = ", ".join(f"{f} x{n}" for f, n in forms.items())
            fn = ", ".join(run.sym(t) or hex(t) for t in sorted(targets))
            seen[name] = f"trampoline + {len(addrs) - 1} sites: {shown}" + (f" -> {fn}" if fn else "")
            if bad:
                self.failed.append(f"after '{st.name}': static call {name} should be in the {want} form "
                                   f"everywhere ({shown}): " + "; ".join(bad))
            elif len(targets) > 1:
                self.failed.append(f"after '{st.name}': static call {name} calls different functions: {fn}")
            elif func and targets != {by_name.get(func)}:
                self.failed.append(f"after '{st.name}': static call {name} calls {fn or 'nothing'}, "
                                   f"expected {func}")
        return seen

    def _final(self, run: Run) -> None:
        fs = self.sc.final_state
        if fs.site:
            self.out["final_site"] = self._check_fentry(run, fs.site, "at the end")
        if fs.body and self.body:
            self.out["final_body"] = self._check_body(run, fs.body, "at the end")
        for cmd, rx in fs.checks:
            res = run.vm.run(self.expand(cmd))
            if not re.search(rx, res.stdout):
                self.failed.append(f"final state: `{self.expand(cmd)}` printed "
                                   f"{res.stdout.strip()[:80]!r}, expected /{rx}/")

    def _floor(self, run: Run) -> int | None:
        sc = self.sc
        if self.body is not None:
            return run.traps_in([(self.body[0], self.body[0] + 5)])
        if sc.floor_keys:  # by the census's users now: regions named after a trap (BPF text) count
            return count_keys(run.probe.attributed_records(), sc.floor_keys)
        if sc.floor_anywhere:
            return run.probe.judged_count()
        if sc.floor_functions:
            ranges = [r for r in (run.function_range(f) for f in sc.floor_functions) if r]
            if not ranges:
                return None
            return run.traps_in(ranges)
        rng = run.function_range(sc.function or "")
        if rng is None:
            return None
        return run.traps_in([(rng[0], rng[0] + 16)])


