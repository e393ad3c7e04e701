"""The QEMU command line: golden files plus the safety properties it must always keep.

Regenerate the golden files after an intended argv change with::

    POKELAB_UPDATE_GOLDEN=1 .venv/bin/pytest -q tests/unit/test_qemu_argv.py
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.core.errors import UsageError
from orchestrator.machine import qemu
from orchestrator.machine.qemu import QemuConfig, build_argv, repro_script

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"
UPDATE = os.environ.get("POKELAB_UPDATE_GOLDEN") == "1"

GDB_PORT = 41234
SSH_PORT = 41022


def _config(**over: object) -> QemuConfig:
    base = QemuConfig(
        kernel_image=Path("/pokelab/kernels/vmlinuz-test"),
        initrd=Path("/pokelab/initramfs/initramfs-test.cpio.gz"),
        workdir=Path("/tmp/pokelab-golden"),
        gdb_port=GDB_PORT,
        ssh_port=SSH_PORT,
    )
    return replace(base, **over)  # type: ignore[arg-type]


def _check_golden(name: str, argv: list[str]) -> None:
    assert all("\n" not in a for a in argv), "one arg per line needs args without newlines"
    text = "\n".join(argv) + "\n"
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with POKELAB_UPDATE_GOLDEN=1 to create it"
    assert text.splitlines() == path.read_text().splitlines(), (
        f"argv differs from {path} (POKELAB_UPDATE_GOLDEN=1 regenerates it if intended)")


# --------------------------------------------------------------------------- golden


def test_golden_tcg() -> None:
    _check_golden("qemu_argv_tcg.txt", build_argv(_config()))


def test_golden_kvm() -> None:
    _check_golden("qemu_argv_kvm.txt", build_argv(_config(accel="kvm", smp=2, memory_mb=2048)))


def test_golden_built_qemu() -> None:
    """A QEMU built by ``pokelab qemu``: its path, and the host's firmware dirs with ``-L``."""
    cfg = _config(qemu="/pokelab/qemu/10.2.2/qemu-system-x86_64",
                  data_dirs=("/usr/share/qemu", "/usr/share/seabios"))
    argv = build_argv(cfg)
    _check_golden("qemu_argv_tcg_built.txt", argv)
    assert argv[:5] == [cfg.qemu, "-L", "/usr/share/qemu", "-L", "/usr/share/seabios"]
    assert argv[5:] == build_argv(_config())[1:]  # nothing else changes


def test_golden_microvm() -> None:
    """``--machine microvm``: virtio-mmio devices, no legacy timers, the host TSC rate on the
    command line; everything else as on ``pc``."""
    cfg = _config(machine="microvm", tsc_khz=2595456)
    argv = build_argv(cfg)
    _check_golden("qemu_argv_tcg_microvm.txt", argv)
    assert _value(argv, "-machine").split(",")[0] == "microvm"
    assert _values(argv, "-device") == ["virtio-net-device,netdev=n0", "virtio-rng-device"]
    assert "tsc_early_khz=2595456" in _value(argv, "-append").split()
    pc = build_argv(_config())
    differ = {i for i, (a, b) in enumerate(zip(argv, pc, strict=True)) if a != b}
    assert {argv[i - 1] for i in differ} == {"-machine", "-append", "-device"}


def test_microvm_needs_the_tsc_rate() -> None:
    with pytest.raises(UsageError, match="TSC"):
        _config(machine="microvm")
    assert "tsc_early_khz" not in _config(tsc_khz=2595456).cmdline  # pc calibrates on its PM timer


def test_bad_machine() -> None:
    with pytest.raises(UsageError, match="machine"):
        _config(machine="q35")


def test_build_argv_is_pure() -> None:
    cfg = _config(append=("quiet",), extra=("-d", "guest_errors"))
    assert build_argv(cfg) == build_argv(cfg)
    assert build_argv(cfg) is not build_argv(cfg)


# --------------------------------------------------------------------------- safety


def _value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} given {argv.count(flag)} times"
    return argv[argv.index(flag) + 1]


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_safety_properties(accel: str) -> None:
    cfg = _config(accel=accel)
    argv = build_argv(cfg)
    assert argv[0] == qemu.QEMU
    # gdbstub: loopback only, our port, never -s (which is tcp::1234 on all addresses)
    assert _value(argv, "-gdb") == f"tcp:127.0.0.1:{GDB_PORT}"
    assert "-s" not in argv
    assert not any("0.0.0.0" in a or "[::]" in a for a in argv)
    # SSH forward binds loopback
    netdev = _value(argv, "-netdev")
    assert f"hostfwd=tcp:127.0.0.1:{SSH_PORT}-:22" in netdev.split(",")
    assert netdev.count("hostfwd=") == 1
    # QMP and serial are unix sockets in the workdir
    assert _value(argv, "-qmp") == f"unix:{cfg.workdir / 'qmp.sock'},server=on,wait=off"
    chardev = _value(argv, "-chardev")
    assert chardev.startswith("socket,") and f"path={cfg.workdir / 'console.sock'}" in chardev
    assert "host=" not in chardev and "port=" not in chardev
    assert _value(argv, "-serial") == "chardev:con0"
    assert "-monitor" not in argv
    # paused start, no reboot: a panic ends QEMU
    assert "-S" in argv and "-no-reboot" in argv
    append = _value(argv, "-append").split()
    assert "nokaslr" in append and "panic=-1" in append and "console=ttyS0" in append
    assert not any(w.split("=")[0] == "kaslr" for w in append)


def test_tcg_single_thread_by_default() -> None:
    argv = build_argv(_config())
    assert _value(argv, "-accel") == "tcg,thread=single"
    assert _value(argv, "-cpu") == "qemu64,+rdrand"  # not "host": that is KVM only
    assert _value(build_argv(_config(tcg_thread="multi")), "-accel") == "tcg,thread=multi"


def test_kvm_accel() -> None:
    argv = build_argv(_config(accel="kvm"))
    assert _value(argv, "-accel") == "kvm"
    assert _value(argv, "-cpu") == "host"


def test_user_append_and_extra_come_after_base() -> None:
    argv = build_argv(_config(append=("quiet", "loglevel=3"), extra=("-d", "guest_errors")))
    words = _value(argv, "-append").split()
    assert words[: len(qemu.BASE_APPEND)] == list(qemu.BASE_APPEND)
    assert words[-2:] == ["quiet", "loglevel=3"]
    assert argv[-2:] == ["-d", "guest_errors"]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("append", [("kaslr",), ("quiet", "kaslr=1")])
def test_kaslr_refused(append: tuple[str, ...]) -> None:
    with pytest.raises(UsageError, match="KASLR"):
        _config(append=append)


@pytest.mark.parametrize("smp", [0, -1, 65, 1000])
def test_bad_smp(smp: int) -> None:
    with pytest.raises(UsageError, match="smp"):
        _config(smp=smp)


@pytest.mark.parametrize("accel", ["hvf", "", "KVM", "tcg,thread=multi", "auto"])
def test_bad_accel(accel: str) -> None:
    with pytest.raises(UsageError, match="accelerator"):
        _config(accel=accel)


def test_bad_tcg_thread_and_memory() -> None:
    with pytest.raises(UsageError):
        _config(tcg_thread="many")
    with pytest.raises(UsageError):
        _config(memory_mb=128)


def test_limits_accepted() -> None:
    for smp in (1, 64):
        assert _value(build_argv(_config(smp=smp)), "-smp") == str(smp)
    assert _value(build_argv(_config(memory_mb=256)), "-m") == "256"


# --------------------------------------------------------------------------- repro.sh


def test_repro_script(tmp_path: Path) -> None:
    cfg = _config()
    argv = build_argv(cfg)
    text = repro_script(argv, "kernel 6.1-test")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert text.endswith("\n")
    assert "# kernel 6.1-test" in lines
    assert f"mkdir -p {cfg.workdir}" in lines
    exec_lines = [ln for ln in lines if ln.startswith("exec ")]
    assert len(exec_lines) == 1 and lines[-1] == exec_lines[0]
    rerun = shlex.split(exec_lines[0])[1:]
    assert rerun == [a for a in argv if a != "-S"]
    assert "-S" not in rerun
    assert f"tcp:127.0.0.1:{GDB_PORT}" in rerun
    # the -append string survives quoting as one word
    assert rerun[rerun.index("-append") + 1] == cfg.cmdline
    # valid sh
    script = tmp_path / "repro.sh"
    script.write_text(text)
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=10)


def test_repro_script_quotes_odd_paths(tmp_path: Path) -> None:
    cfg = _config(workdir=Path("/tmp/poke lab's dir"), kernel_image=Path("/k/vmlinuz $(touch x)"))
    text = repro_script(build_argv(cfg))
    lines = text.splitlines()
    mkdir = next(ln for ln in lines if ln.startswith("mkdir -p "))
    assert shlex.split(mkdir) == ["mkdir", "-p", "/tmp/poke lab's dir"]
    rerun = shlex.split(lines[-1])[1:]
    assert rerun[rerun.index("-kernel") + 1] == "/k/vmlinuz $(touch x)"
    script = tmp_path / "repro.sh"
    script.write_text(text)
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=10)
