"""``pokelab bench``'s probed column goes through ``execute(RunRequest(...))`` (issue 14 item 2).

The scenario's steps run once without the probe (``RunRequest.baseline_cycles``, before GDB
attaches: ``baseline_steps``) and then under it (``steps``); ``probe_overhead`` is the ratio of
the two medians of the same steps' host seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.errors import InfraError, UsageError
from orchestrator.jobs.bench import boot_order, probe_figures
from orchestrator.kernels import loadgen
from orchestrator.kernels.images import KernelArtifacts
from orchestrator.machine.vm import VmSpec
from orchestrator.run import probe_run
from orchestrator.run.execute import execute
from orchestrator.run.prepare import Prepared
from orchestrator.run.request import RunRequest
from orchestrator.run.scenario import with_options
from orchestrator.run.scenarios_table import BY_NAME

STEPS = ("tracer-on", "tracer-off")


def _entry(step: str, s: float, cycle: int = 0) -> dict[str, Any]:
    return {"step": step, "cycle": cycle, "s": s}


def _record(without: list[float], under: list[float], traps: int = 40) -> dict[str, Any]:
    def log(times: list[float]) -> list[dict[str, Any]]:
        cycles = [_entry(STEPS[i % 2], t, i // 2) for i, t in enumerate(times)]
        return [_entry("filter", 9.0), *cycles, _entry("clear-filter", 9.0)]

    return {"verdict": "PASS", "traps_judged": traps, "baseline_steps": log(without), "steps": log(under),
            "trap_cost_ms_median": 3.21, "tb_flushes_per_stop": 0.0, "tb_flushes": 0, "probe_stops": 120,
            "cycles_s": 30.0}


def test_probe_figures_compare_the_same_steps_with_and_without_the_probe() -> None:
    fig = probe_figures(_record([1.0, 1.2, 1.0, 1.2], [2.0, 2.4, 2.0, 2.4]), STEPS, bare_stop_ms=4.0)
    assert fig["switch_without_probe_s"] == 1.1 and fig["switch_with_probe_s"] == 2.2
    assert fig["probe_overhead"] == 2.0
    # (2.2 - 1.1) s x 4 switches under the probe / 40 traps = 110 ms a trap
    assert fig["trap_ms"] == 110.0 and fig["trap_cost_ratio"] == 27.5
    assert fig["trap_inside_ms"] == 3.21 and fig["probe_traps_judged"] == 40
    assert fig["traps_per_min"] == 80.0 and fig["probe_toggle_s"] == 30.0
    assert (fig["tb_flushes_per_stop"], fig["tb_flushes"], fig["probe_stops"]) == (0.0, 0, 120)


def test_probe_figures_need_both_sides_and_traps() -> None:
    with pytest.raises(InfraError, match="0 step"):
        probe_figures({**_record([1.0], [2.0]), "baseline_steps": []}, STEPS, 4.0)
    with pytest.raises(InfraError, match="0 trap"):
        probe_figures(_record([1.0], [2.0], traps=0), STEPS, 4.0)


def test_baseline_cycles_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="0 or more"):
        RunRequest(BY_NAME["ftrace-function"], tmp_path, baseline_cycles=-1).check()
    with pytest.raises(UsageError, match="body site"):
        RunRequest(BY_NAME["kprobe-optimized"], tmp_path, baseline_cycles=2).check()


@dataclass
class _Res:
    status: int = 0
    stdout: str = ""
    stderr: str = ""


class _GuestVm:
    """A booted guest that answers every command: its requirement check finds nothing missing,
    each evidence prints 7."""

    def __init__(self, spec: VmSpec) -> None:
        self.spec = spec
        self.release = "6.1.0-56-cloud-amd64"
        self.commands: list[str] = []

    def start(self) -> None:
        pass

    def wait_ready(self) -> None:
        pass

    def check(self, cmd: str) -> str:
        self.commands.append(cmd)
        return ""

    def run(self, cmd: str) -> _Res:
        self.commands.append(cmd)
        return _Res(stdout="7\n")

    def crashes(self) -> list[Any]:
        return []

    def qemu_exited(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def test_execute_runs_the_baseline_before_the_probe_attaches(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    vms: list[_GuestVm] = []

    def vm(spec: VmSpec) -> _GuestVm:
        vms.append(_GuestVm(spec))
        return vms[-1]

    def no_symbols(*args: Any, **kw: Any) -> Any:  # where the probe would attach: stop here
        raise InfraError("no symbols in this test")

    monkeypatch.setattr(probe_run, "Vm", vm)
    monkeypatch.setattr(probe_run, "load_symbols", no_symbols)
    spec = VmSpec(kernel_image=tmp_path / "bz", initrd=tmp_path / "initrd", ssh_key=tmp_path / "key",
                  artifacts=tmp_path, smp=4)
    kernel = KernelArtifacts(id="6.1", release="6.1.0-56-cloud-amd64", bzimage=tmp_path / "bz",
                             vmlinux=tmp_path / "vmlinux", system_map=None, config=None, modules_dir=None,
                             build_id="ab")
    sc = with_options(BY_NAME["ftrace-function"], repeat=3)
    said: list[str] = []
    res = execute(RunRequest(sc, tmp_path, baseline_cycles=2), prepared=Prepared(spec, kernel),
                  progress=said.append)
    assert res.verdict == "INFRA" and res.reasons == ("no symbols in this test",)
    steps = [(e["step"], e["cycle"]) for e in res["baseline_steps"]]
    assert steps == [("filter", 0), ("tracer-on", 0), ("tracer-off", 0), ("tracer-on", 1), ("tracer-off", 1),
                     ("clear-filter", 0)]
    assert all(e["s"] >= 0 for e in res["baseline_steps"])
    assert [e.get("evidence") for e in res["baseline_steps"] if e["step"] == "tracer-on"] == [7, 7]
    cmds = vms[0].commands
    start = cmds.index(loadgen.start_command(sc.load.path, [1, 2, 3], pace=sc.load.pace))
    assert start < next(i for i, c in enumerate(cmds) if "echo function >" in c)
    assert cmds[-1] == loadgen.STOP_COMMAND
    assert "baseline: 2 cycle(s) without the probe" in said
    assert not res["steps"]  # the probed body never ran


def test_boot_order_gives_every_variant_every_position_in_turn() -> None:
    rounds = [boot_order(4, i) for i in range(4)]
    assert rounds[0] == [0, 1, 2, 3] and rounds[1] == [1, 2, 3, 0]
    for r in rounds:
        assert sorted(r) == [0, 1, 2, 3]  # each variant boots once a round
    for pos in range(4):
        assert sorted(r[pos] for r in rounds) == [0, 1, 2, 3]  # each takes each position once
