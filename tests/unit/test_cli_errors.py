"""Bad input through the real ``pokelab`` CLI: exit 2, one stderr line, no traceback, no hang.

Nothing here boots a guest: every case fails before QEMU starts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cache import cache_dir
from orchestrator.cli import main
from orchestrator.images import KernelArtifacts, ensure_kernel, is_cached
from orchestrator.kernels import Catalog
from orchestrator.qemu import QEMU

POKELAB = Path(sys.executable).parent / "pokelab"
DEADLINE = 60.0  # a failing CLI answers in about a second; this only guards against a hang


def pokelab(*args: str, env: dict[str, str] | None = None,
            artifacts: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(POKELAB)] if POKELAB.exists() else [sys.executable, "-m", "orchestrator.cli"]
    full_env = dict(os.environ if env is None else env)
    if artifacts is not None:
        full_env["POKELAB_ARTIFACTS"] = str(artifacts)  # nothing lands in the repo's artifacts/
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=DEADLINE,
                          stdin=subprocess.DEVNULL, env=full_env, check=False)


def assert_one_line_error(res: subprocess.CompletedProcess[str], verdict: str, *needles: str) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{res.stderr}"
    line = lines[0]
    assert res.returncode == 2, f"exit {res.returncode}: {line}"
    assert line.startswith(f"pokelab: {verdict}: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert res.stdout == ""
    return line


def _kernel(kid: str) -> KernelArtifacts:
    spec = Catalog.load().get(kid)
    cache = cache_dir()
    if not is_cached(spec, cache):
        pytest.skip(f"kernel {kid} is not in the cache {cache} (run `pokelab images --kernel {kid}`)")
    return ensure_kernel(spec, cache)


@pytest.fixture
def art(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


@pytest.fixture
def default_kernel_cached() -> KernelArtifacts:
    return _kernel(Catalog.load().default.id)


@pytest.fixture
def listener() -> Iterator[int]:
    """A port held (listening) on 127.0.0.1 for the test's duration."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


# --------------------------------------------------------------------------- kernel choice


def test_unknown_kernel_id(art: Path) -> None:
    res = pokelab("boot", "--kernel", "no-such-kernel", "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "unknown kernel 'no-such-kernel'", "6.1")


def test_unknown_kernel_id_run_cmd(art: Path) -> None:
    res = pokelab("run-cmd", "--kernel", "2.6", "--artifacts", str(art), "--", "true",
                  artifacts=art)
    assert_one_line_error(res, "usage", "unknown kernel '2.6'")


def test_bzimage_missing_path(tmp_path: Path, art: Path) -> None:
    missing = tmp_path / "nope" / "bzImage"
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"")
    res = pokelab("boot", "--bzimage", str(missing), "--vmlinux", str(vmlinux),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "--bzimage", str(missing))


def test_vmlinux_missing_path(tmp_path: Path, art: Path) -> None:
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"x")
    res = pokelab("boot", "--bzimage", str(bz), "--vmlinux", str(tmp_path / "vmlinux"),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "--vmlinux")


def test_bzimage_without_vmlinux(tmp_path: Path, art: Path) -> None:
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"not really a kernel")
    res = pokelab("boot", "--bzimage", str(bz), "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "--bzimage and --vmlinux")


def test_kernel_and_bzimage_together(tmp_path: Path, art: Path) -> None:
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"x")
    res = pokelab("boot", "--kernel", "6.1", "--bzimage", str(bz), "--vmlinux", str(bz),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "either --kernel or --bzimage")


def test_vmlinux_build_id_mismatch(art: Path) -> None:
    k61, k612 = _kernel("6.1"), _kernel("6.12")
    assert k61.build_id != k612.build_id
    res = pokelab("boot", "--bzimage", str(k61.bzimage), "--vmlinux", str(k612.vmlinux),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "is not the vmlinux of", k612.build_id[:12],
                          k61.build_id[:12])


def test_vmlinux_without_debug_info(art: Path) -> None:
    k61 = _kernel("6.1")
    true = Path(shutil.which("true") or "/bin/true")
    res = pokelab("boot", "--bzimage", str(k61.bzimage), "--vmlinux", str(true),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "no .debug_info")


def test_vmlinux_not_elf(tmp_path: Path, art: Path) -> None:
    k61 = _kernel("6.1")
    junk = tmp_path / "vmlinux"
    junk.write_bytes(b"\x7fELF this is not an ELF file at all" * 4)
    res = pokelab("boot", "--bzimage", str(k61.bzimage), "--vmlinux", str(junk),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", str(junk))


def test_bzimage_not_a_kernel(tmp_path: Path, art: Path) -> None:
    k61 = _kernel("6.1")
    junk = tmp_path / "bzImage"
    junk.write_bytes(os.urandom(8192))
    res = pokelab("boot", "--bzimage", str(junk), "--vmlinux", str(k61.vmlinux),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", str(junk))


# --------------------------------------------------------------------------- ports


def test_busy_gdb_port(listener: int, art: Path, default_kernel_cached: KernelArtifacts) -> None:
    res = pokelab("boot", "--gdb-port", str(listener), "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", f"port {listener}", "busy")


def test_busy_ssh_port(listener: int, art: Path, default_kernel_cached: KernelArtifacts) -> None:
    res = pokelab("run-cmd", "--ssh-port", str(listener), "--artifacts", str(art), "--", "true",
                  artifacts=art)
    assert_one_line_error(res, "usage", f"port {listener}", "busy")


@pytest.mark.parametrize("option, port", [("--gdb-port", "70000"), ("--ssh-port", "-5"),
                                          ("--gdb-port", "0")])
def test_port_out_of_range(option: str, port: str, art: Path,
                           default_kernel_cached: KernelArtifacts) -> None:
    res = pokelab("boot", option, port, "--accel", "tcg", "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", f"port {port}", "1..65535")


def test_same_port_for_gdb_and_ssh(art: Path, default_kernel_cached: KernelArtifacts) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = pokelab("boot", "--gdb-port", str(port), "--ssh-port", str(port),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", f"share port {port}")


# --------------------------------------------------------------------------- host tools


def test_qemu_missing(tmp_path: Path, art: Path, default_kernel_cached: KernelArtifacts) -> None:
    """PATH holds every host tool except QEMU: the real CLI must say which package to install."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name.startswith("qemu-system") or (bindir / name).exists():
                continue
            src = os.path.join(d, name)
            if os.path.isfile(src) and os.access(src, os.X_OK):
                (bindir / name).symlink_to(src)
    env = dict(os.environ, PATH=str(bindir))
    assert shutil.which(QEMU, path=str(bindir)) is None
    res = pokelab("boot", "--accel", "tcg", "--artifacts", str(art), env=env, artifacts=art)
    assert_one_line_error(res, "infra", QEMU, "not found", "qemu-system-x86")


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("tail", [[], ["--"]])
def test_run_cmd_without_command(tail: list[str], art: Path) -> None:
    res = pokelab("run-cmd", "--artifacts", str(art), *tail, artifacts=art)
    assert_one_line_error(res, "usage", "run-cmd needs a guest command")
    assert not art.exists(), "nothing should be created for a rejected command line"


@pytest.mark.parametrize("args, needles", [
    (["frobnicate"], ["frobnicate", "invalid choice"]),
    ([], ["required", "COMMAND"]),
    (["probe", "--inject", "scramble"], ["--inject", "scramble"]),
    (["boot", "--accel", "hvf"], ["--accel", "hvf"]),
    (["boot", "--smp", "many"], ["--smp", "many"]),
    (["boot", "--no-such-option"], ["--no-such-option"]),
])
def test_argparse_errors_are_one_line(args: list[str], needles: list[str], art: Path) -> None:
    res = pokelab(*args, artifacts=art)
    assert_one_line_error(res, "usage", *needles)


@pytest.mark.parametrize("args, needle", [
    (["boot", "--smp", "0", "--dry-run"], "--smp"),
    (["boot", "--smp", "65", "--dry-run"], "--smp"),
    (["boot", "--memory", "64", "--dry-run"], "--memory"),
    (["probe", "--toggles", "0", "--dry-run"], "--toggles"),
])
def test_bad_numbers(args: list[str], needle: str, art: Path,
                     default_kernel_cached: KernelArtifacts) -> None:
    res = pokelab(*args, "--accel", "tcg", "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", needle)


def test_main_entry_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    """The console-script entry itself: argparse errors leave through SystemExit(2), one line."""
    with pytest.raises(SystemExit) as exc:
        main(["--frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pokelab: usage: ") and "Traceback" not in err


@pytest.mark.parametrize(("args", "needle"), [
    (["--scenario", "ftrace-function"], "give --source DIR --good REV --bad REV, or --debian GOOD..BAD"),
    (["--source", ".", "--scenario", "ftrace-function"], "or --debian GOOD..BAD"),
    (["--debian", "6.1.0-47", "--scenario", "ftrace-function"], "--debian wants GOOD..BAD"),
    (["--debian", "6.1..6.12", "--good", "x", "--scenario", "ftrace-function"], "--good does not go with"),
    (["--debian", "6.1..6.12", "--scenario", "no-such"], "unknown scenario 'no-such'"),
    (["--debian", "6.1..6.12", "--kernel", "6.1", "--scenario", "ftrace-function"],
     "unrecognized arguments: --kernel 6.1"),
])
def test_bisect_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    res = pokelab("bisect", *args, artifacts=tmp_path)
    assert_one_line_error(res, "usage", needle)
