"""A whole probed run through ``execute`` with the VM and GDB faked (tests/unit/fakerun.py).

Everything between the request and verdict.json is the real code: ``execute``,
``run_probed``, ``ScenarioBody`` (load, steps, evidence, floor), the trap ledger and
judge (on traps captured from a live 6.1 run), ``decide``, ``RunResult.write``.
Only the VM, GDB's attach and the symbol/census loaders are replaced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from fakerun import (
    RELEASE,
    STALL_LOG,
    SYMBOLS,
    VIOLATION_MI,
    FakeProbe,
    FakeVm,
    Guest,
)

from orchestrator.core.census import KernelTables
from orchestrator.core.errors import BootError, KernelCrash, RunInterrupted
from orchestrator.kernels import loadgen
from orchestrator.kernels.images import KernelArtifacts
from orchestrator.machine.vm import VmSpec
from orchestrator.run import probe_run
from orchestrator.run.execute import execute
from orchestrator.run.prepare import Prepared
from orchestrator.run.request import RunRequest
from orchestrator.run.result import RunResult
from orchestrator.run.scenario import FinalState, Scenario, Step

#: a scenario as small as they come: the function tracer on and off around getpid, once
TOY = Scenario("toy-ftrace", "the function tracer on __do_sys_getpid, on and off",
               requires=("symbol:{function}",),
               steps=(Step("tracer-on", "echo function > {tracing}/current_tracer",
                           evidence="{call}; grep -c getpid {tracing}/trace"),
                      Step("tracer-off", "echo nop > {tracing}/current_tracer")),
               final_state=FinalState(site=None), repeat=2, min_traps=10)


@dataclass
class Probed:
    """One faked run: its result, the VM and probe it used, and every verdict.json written."""

    result: RunResult | None = None
    interrupted: RunInterrupted | None = None
    vms: list[FakeVm] = field(default_factory=list)
    probes: list[FakeProbe] = field(default_factory=list)
    writes: list[Path] = field(default_factory=list)

    @property
    def written(self) -> dict[str, Any]:
        assert len(self.writes) == 1, self.writes
        return json.loads(self.writes[0].read_text())  # type: ignore[no-any-return]


Run = Callable[..., Probed]


@pytest.fixture
def probed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("POKELAB_CACHE", str(tmp_path / "cache"))
    real_write = RunResult.write

    def run(guest: Guest | None = None, *, scenario: Scenario = TOY, inject: str | None = None,
            hold: Callable[[probe_run.Run], None] | None = None, **probe_kw: Any) -> Probed:
        p = Probed()

        def vm(spec: VmSpec) -> FakeVm:
            p.vms.append(FakeVm(spec, guest or Guest()))
            return p.vms[-1]

        def probe(*args: Any, **kwargs: Any) -> FakeProbe:
            p.probes.append(FakeProbe(*args, **probe_kw, **kwargs))
            return p.probes[-1]

        def write(self: RunResult, path: Path | None = None) -> Path:
            p.writes.append(real_write(self, path))
            return p.writes[-1]

        monkeypatch.setattr(probe_run, "Vm", vm)
        monkeypatch.setattr(probe_run, "Probe", probe)
        monkeypatch.setattr(probe_run, "load_symbols", lambda *a, types=None, **k: [] if types else SYMBOLS)
        monkeypatch.setattr(probe_run, "load_tables", lambda *a, **k: KernelTables())
        monkeypatch.setattr(RunResult, "write", write)
        art = tmp_path / "run"
        spec = VmSpec(kernel_image=tmp_path / "bz", initrd=tmp_path / "initrd", ssh_key=tmp_path / "key",
                      artifacts=art, release=RELEASE, smp=2, accel="kvm")
        kernel = KernelArtifacts(id="6.1", release=RELEASE, bzimage=tmp_path / "bz",
                                 vmlinux=tmp_path / "vmlinux", system_map=None, config=None, modules_dir=None,
                                 build_id="ab" * 20)
        request = RunRequest(scenario, art, inject=inject)
        try:
            p.result = execute(request, prepared=Prepared(spec, kernel), hold=hold)
        except RunInterrupted as exc:
            p.interrupted = exc
        assert all(v.closed for v in p.vms) and all(pr.closed for pr in p.probes)
        return p

    return run


def test_a_clean_run_passes_with_its_traps_judged(probed: Run) -> None:
    p = probed()
    res = p.result
    assert res is not None and res.verdict == "PASS", res and res.reasons
    assert res.reasons == ("80 trap(s) judged, 0 violations, 0 site read-backs matched",)
    assert p.written == res.as_dict() and p.writes == [res.artifacts / "verdict.json"]  # type: ignore[operator]
    assert res.traps_judged == 80 and res.violations == 0
    assert res["floor_traps"] == 66  # the traps at __do_sys_getpid's fentry site, of the 80
    assert res["sites"]["0xffffffff810b0f40"] == {"name": "__do_sys_getpid+0x0", "traps": 66}
    assert res["kernel"] == RELEASE and res["kernel_id"] == "6.1" and res["scenario"] == "toy-ftrace"
    d = res.as_dict()
    assert d["load"] == {"path": "getpid", "iterations": {"1": 1000}}
    assert d["evidence"] == {"tracer-on": 6}  # 3 per cycle, 2 cycles
    assert [s["step"] for s in d["steps"]] == ["tracer-on", "tracer-off"] * 2
    assert d["judged_after_cycle"] == [80, 80]
    assert set(res["phases"]) == {"boot_s", "attach_s", "body_s", "total_s"}
    assert "interrupted" not in res.record
    # the steps ran from vCPU 0 with the load on vCPU 1, stopped at the end
    cmds = p.vms[0].commands
    assert any("taskset -c 1 /bin/loadgen getpid" in c for c in cmds)
    assert "taskset -c 0 sh -c 'echo function > /sys/kernel/tracing/current_tracer'" in cmds
    assert cmds[-1] == loadgen.STOP_COMMAND
    traps = (res.artifacts / "traps.jsonl").read_text().splitlines()  # type: ignore[operator]
    assert len(traps) == 80 and res["trap_log"] == str(res.artifacts / "traps.jsonl")  # type: ignore[operator]


@pytest.mark.parametrize("inject", [None, "wrong-target"])
def test_a_violation_fails_the_run(probed: Run, inject: str | None) -> None:
    p = probed(transcript=VIOLATION_MI, inject=inject)
    res = p.result
    assert res is not None and res.verdict == "FAIL"
    assert res.reasons[0] == "15 emulation violation(s)" and res.violations == 15
    assert len(res["violation_examples"]) == 5
    assert res["violation_examples"][0]["reason"].startswith("descriptor disp disagrees")
    if inject:  # the self-test: every injected trap flagged, no other
        assert res.reasons[1] == "15 of 15 injected traps flagged, 0 other(s) flagged"
        assert res["injection_check"] == "every injected trap flagged, no other"
    else:
        assert "injection_check" not in res.record
    assert p.written["verdict"] == "FAIL"


def test_an_oops_on_the_console_is_a_crash(probed: Run) -> None:
    p = probed(Guest(crash_on="echo nop"))
    res = p.result
    assert res is not None and res.verdict == "CRASH"
    assert res.reasons == ("BUG: kernel NULL pointer dereference in __do_sys_getpid",
                           "Oops in __do_sys_getpid")
    assert [c["type"] for c in res["crashes"]] == ["bug", "oops"]
    assert not any(c["probe_may_have_caused"] for c in res["crashes"])
    assert res.traps_judged == 80  # what the probe judged before the oops is kept
    assert p.written["verdict"] == "CRASH"
    # the steps stopped at the crash (the first tracer-off); the load was stopped
    cmds = p.vms[0].commands
    steps = [c for c in cmds if c.startswith("taskset -c 0 sh -c 'echo")]
    assert len(steps) == 2 and "echo nop" in steps[-1] and cmds[-1] == loadgen.STOP_COMMAND


def test_a_stall_under_a_busy_probe_is_not_the_kernel_s_crash(probed: Run) -> None:
    # the fake probe's 80 traps arrive at once: thousands of stops a second, far above the 2/s
    # from which a stall report is blamed on the probe
    p = probed(Guest(crash_on="echo nop", crash_log=STALL_LOG))
    res = p.result
    assert res is not None and res.verdict == "INCONCLUSIVE"
    assert "the probe may have caused it" in res.reasons[0] and "rcu_preempt detected stall" in res.reasons[0]
    assert all(c["probe_may_have_caused"] for c in res["crashes"])


def test_a_violation_before_the_oops_is_a_fail_naming_the_crash(probed: Run) -> None:
    p = probed(Guest(crash_on="echo nop"), transcript=VIOLATION_MI)
    res = p.result
    assert res is not None and res.verdict == "FAIL"
    assert res.reasons[0] == "15 emulation violation(s)"
    assert res.reasons[-1].startswith("then the kernel crashed: BUG: kernel NULL pointer dereference")


@pytest.mark.parametrize("exc, verdict", [
    (BootError("guest did not boot: no readiness marker within 300 s", "tail of the console"), "BOOT_FAIL"),
    (KernelCrash("kernel crashed during boot: Kernel panic - not syncing: VFS"), "CRASH")])
def test_a_guest_that_does_not_boot(probed: Run, exc: Exception, verdict: str) -> None:
    p = probed(Guest(boot=exc))
    res = p.result
    assert res is not None and res.verdict == verdict and res.reasons == (str(exc),)
    assert p.probes == []  # no GDB for a guest that did not boot
    assert res.traps_judged == 0 and p.written["verdict"] == verdict
    if verdict == "BOOT_FAIL":
        assert res["tail"] == "tail of the console"


def test_a_recorder_that_lost_stops_is_infra(probed: Run) -> None:
    p = probed(lost=3)
    res = p.result
    assert res is not None and res.verdict == "INFRA"
    assert res.reasons == ("recorder errors 0, lost stops 3: not every trap was judged",)
    assert res["lost"] == 3 and res.traps_judged == 80 and p.written["verdict"] == "INFRA"


def test_too_few_traps_at_the_watched_site_is_inconclusive(probed: Run) -> None:
    p = probed(scenario=replace(TOY, min_traps=100))
    res = p.result
    assert res is not None and res.verdict == "INCONCLUSIVE"
    assert res.reasons == ("66 trap(s) judged at __do_sys_getpid's site, fewer than the floor of 100",)
    assert p.written["evidence"] == {"tracer-on": 6}


def test_a_requirement_missing_in_the_guest_is_unsupported(probed: Run) -> None:
    p = probed(Guest(missing=("symbol:__do_sys_getpid",)))
    res = p.result
    assert res is not None and res.verdict == "UNSUPPORTED"
    assert res.reasons == ("missing in the guest: symbol:__do_sys_getpid",)
    assert p.probes == [] and p.written["requires"] == ["symbol:__do_sys_getpid"]


@pytest.mark.parametrize("transcript, verdict", [(None, "INCONCLUSIVE"), (VIOLATION_MI, "FAIL")])
def test_sigint_during_the_steps(probed: Run, transcript: Path | None, verdict: str) -> None:
    p = probed(Guest(interrupt_on="echo nop"), **({"transcript": transcript} if transcript else {}))
    assert p.result is None and p.interrupted is not None
    exc = p.interrupted
    assert (exc.code, exc.signal_name) == (130, "SIGINT")
    assert isinstance(exc.result, RunResult) and p.written == exc.result.as_dict()
    assert p.written["interrupted"] is True and p.written["verdict"] == verdict
    judged = p.written["traps_judged"]
    assert p.written["reasons"][-1].startswith(f"interrupted by SIGINT after {judged} trap(s) judged")
    # the load is not stopped on a signal: the VM is closed next
    assert loadgen.STOP_COMMAND not in p.vms[0].commands


def test_hold_runs_at_the_first_violation_and_the_run_fails(probed: Run) -> None:
    held: list[int] = []

    def hold(run: probe_run.Run) -> None:
        held.append(len(run.probe.violations))
        raise probe_run.StoppedAtViolation("stopped at the first violation for --gdb (x)")

    p = probed(transcript=VIOLATION_MI, hold=hold)
    assert held == [15]
    res = p.result
    assert res is not None and res.verdict == "FAIL"
    assert res.reasons == ("stopped at the first violation for --gdb (x)",)
    assert res.violations == 15 and p.written["verdict"] == "FAIL"
    assert probed(hold=hold).result.verdict == "PASS" and held == [15]  # type: ignore[union-attr]
