"""The guest's watchdog thresholds scaled to the machine, and stall reports blamed on the probe.

The stall log is a real one: an unfiltered function-tracer switch under the probe with no trap
budget and the kernel's default thresholds (Debian 6.1.0-56, QEMU 7.2 TCG).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.core import crash, verdict, watchdogs
from orchestrator.gdb.probe import Probe
from orchestrator.gdb.symbols import KernelSymbolizer
from orchestrator.machine.vm import Vm, VmSpec

DATA = Path(__file__).resolve().parent.parent / "data"
STALL_LOG = DATA / "console" / "rcu-stall-soft-lockup-probe-6.1.log"
EVENTS = DATA / "budget" / "unfiltered-6.1-no-budget.events"


def test_tcg_single_scales_by_vcpus_and_probe() -> None:
    wd = watchdogs.for_machine("tcg", "single", 4)
    assert wd is not None
    assert wd.slowdown == pytest.approx(4 * watchdogs.PROBE_OVERHEAD_FLUSHING)
    assert wd.rcu_cpu_stall_timeout == 160   # ceil(21 * 7.6)
    assert wd.watchdog_thresh == 76           # soft lockup after 152 s
    assert wd.hung_task_timeout_secs == 420   # capped
    assert wd.kernel_args() == ("rcupdate.rcu_cpu_stall_timeout=160", "watchdog_thresh=76",
                                "sysctl.kernel.hung_task_timeout_secs=420")
    d = wd.as_dict()
    assert d["soft_lockup_after_s"] == 152 and d["parts"]["vcpus_per_host_thread"] == 4
    json.dumps(d)


def test_caps_and_identity() -> None:
    big = watchdogs.scaled(100.0)
    assert (big.rcu_cpu_stall_timeout, big.watchdog_thresh, big.hung_task_timeout_secs) == (300, 165, 420)
    one = watchdogs.scaled(1.0)
    assert (one.rcu_cpu_stall_timeout, one.watchdog_thresh, one.hung_task_timeout_secs) == (21, 10, 120)
    with pytest.raises(ValueError):
        watchdogs.scaled(0.5)
    assert watchdogs.for_machine("kvm", "single", 4) is None
    multi = watchdogs.for_machine("tcg", "multi", 4, probe_overhead=watchdogs.PROBE_OVERHEAD_NO_FLUSH)
    assert multi is not None and multi.rcu_cpu_stall_timeout == 24  # ceil(21 * 1.1)


def test_the_thresholds_go_on_the_kernel_command_line_before_the_users(tmp_path: Path) -> None:
    spec = VmSpec(kernel_image=tmp_path / "bz", initrd=tmp_path / "rd", ssh_key=tmp_path / "k",
                  artifacts=tmp_path / "a", append=("watchdog_thresh=5",))
    cfg = Vm(spec).make_config(1234, 10022, tmp_path)
    words = cfg.cmdline.split()
    assert "rcupdate.rcu_cpu_stall_timeout=160" in words
    # the user's own value comes last, and the kernel takes the last one
    assert words.index("watchdog_thresh=76") < words.index("watchdog_thresh=5")
    kvm = Vm(VmSpec(kernel_image=tmp_path / "bz", initrd=tmp_path / "rd", ssh_key=tmp_path / "k",
                    artifacts=tmp_path / "b", accel="kvm")).make_config(1, 2, tmp_path)
    assert "watchdog_thresh" not in kvm.cmdline


def _stall_crashes() -> list[crash.Crash]:
    lines = STALL_LOG.read_text(errors="replace").replace("\r", "").splitlines()
    return crash.scan(lines)


def test_captured_stall_is_a_stall_and_a_soft_lockup() -> None:
    types = [c.type for c in _stall_crashes()]
    assert types == ["rcu-stall", "soft-lockup"]


def test_stall_under_a_busy_probe_is_inconclusive_and_says_why() -> None:
    found = _stall_crashes()
    blame = verdict.probe_blame([c.type for c in found], 60.0)
    assert blame and "60.0 times/s" in blame and "may have caused" in blame
    out = verdict.decide({"traps_judged": 8813}, crashes=[c.title for c in found], probe_blame=blame)
    assert out.verdict == "INCONCLUSIVE"
    assert "INFO: rcu_preempt detected stall" in out.reasons[0] and "60.0 times/s" in out.reasons[0]


def test_stall_under_a_quiet_probe_stays_a_crash() -> None:
    found = _stall_crashes()
    assert verdict.probe_blame([c.type for c in found], 0.5) is None
    assert verdict.probe_blame([c.type for c in found], None) is None
    out = verdict.decide({"traps_judged": 3}, crashes=[c.title for c in found], probe_blame=None)
    assert out.verdict == "CRASH"


def test_an_oops_with_the_stall_stays_a_crash() -> None:
    assert verdict.probe_blame(["rcu-stall", "oops-int3"], 100.0) is None
    assert verdict.probe_blame([], 100.0) is None


def test_stop_rate_of_the_captured_switch(tmp_path: Path) -> None:
    """The host's stop rate, fed the real records' spacing: far above the blame threshold."""
    probe = Probe(Path("/nonexistent/vmlinux"), "127.0.0.1:1", tmp_path, KernelSymbolizer([]), 1.0)
    evs = [line.split() for line in EVENTS.read_text().splitlines() if line and not line.startswith("#")]
    base = probe._t0
    for kind, t, *_ in evs:
        probe._stop_times.append((base + float(t), 2 if kind == "T" else 1))
    end = base + float(evs[-1][1])
    rate = probe.stop_rate(window=30.0, now=end)
    assert rate > verdict.PROBE_STALL_RATE * 10
    assert probe.stop_rate(window=30.0, now=end + 60.0) == 0.0


def test_probe_overhead_follows_the_qemu() -> None:
    assert watchdogs.probe_overhead(False) == watchdogs.PROBE_OVERHEAD_NO_FLUSH
    assert watchdogs.probe_overhead(True) == watchdogs.PROBE_OVERHEAD_FLUSHING
    assert watchdogs.probe_overhead(None) == watchdogs.PROBE_OVERHEAD_FLUSHING  # not known: the larger


def test_the_spec_scales_by_its_qemus_measured_flushes(tmp_path: Path) -> None:
    from orchestrator.machine.qemu_build import QemuBinary

    def spec(q: QemuBinary | None) -> VmSpec:
        return VmSpec(kernel_image=tmp_path / "bz", initrd=tmp_path / "rd", ssh_key=tmp_path / "k",
                      artifacts=tmp_path / "a", qemu=q)

    fast = spec(QemuBinary(tmp_path / "q10", "10.2.2", "built", tb_flushes_per_stop=0.0)).watchdogs
    assert fast is not None and fast.slowdown == pytest.approx(4 * 1.1)
    assert fast.rcu_cpu_stall_timeout == 93 and fast.watchdog_thresh == 44  # ceil(21 * 4.4), ceil(10 * 4.4)
    assert fast.as_dict()["parts"]["probe_overhead"] == watchdogs.PROBE_OVERHEAD_NO_FLUSH
    slow = spec(QemuBinary(tmp_path / "q7", "7.2.22", "host", tb_flushes_per_stop=1.0)).watchdogs
    assert slow is not None and slow.rcu_cpu_stall_timeout == 160
    # measured beats the version: a 10.2 that was seen flushing is scaled as one that flushes
    patched = spec(QemuBinary(tmp_path / "qx", "10.2.2", "given", tb_flushes_per_stop=2.0)).watchdogs
    assert patched is not None and patched.slowdown == pytest.approx(4 * 1.9)
    # not measured: the version decides; not described at all: the larger figure
    by_version = spec(QemuBinary(tmp_path / "q11", "11.0.0", "host")).watchdogs
    assert by_version is not None and by_version.slowdown == pytest.approx(4.4)
    unknown = spec(None).watchdogs
    assert unknown is not None and unknown.slowdown == pytest.approx(4 * 1.9)


def test_a_batch_is_two_stops_where_its_returns_are_hooked(tmp_path: Path) -> None:
    probe = Probe(Path("/nonexistent/vmlinux"), "127.0.0.1:1", tmp_path, KernelSymbolizer([]), 1.0)
    assert (probe._stops_of("POKELAB-TRAP"), probe._stops_of("POKELAB-BATCH")) == (2, 1)
    probe.setup_info = {"poke_batch_exits": [0xFFFFFFFF81038CAE]}  # 6.1: text_poke_bp_batch's return
    assert (probe._stops_of("POKELAB-BATCH"), probe._stops_of("POKELAB-OTHER")) == (2, 1)
