"""Boot real kernels in QEMU (TCG here) and check the guest, its artifacts and QEMU's sockets."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from orchestrator.core.errors import InfraError
from orchestrator.host.cache import cache_dir
from orchestrator.kernels.catalog import Catalog
from orchestrator.kernels.debian import cached_spec
from orchestrator.kernels.images import KernelArtifacts
from orchestrator.kernels.pvh import pvh_image
from orchestrator.machine.vm import Vm
from orchestrator.run.prepare import prepare_vm
from orchestrator.run.request import KernelChoice, VmOptions

pytestmark = pytest.mark.vm

KERNELS = ["6.1", "6.12"]


def descendants(pid: int) -> set[int]:
    """All live descendants of ``pid`` (through every thread's children list)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def qemu_pid(vm: Vm) -> int:
    """Our QEMU, found as a child of this process by its unique QMP socket path."""
    assert vm.config is not None
    key = f"unix:{vm.config.qmp_socket},"
    found = [p for p in descendants(os.getpid())
             if any(a.startswith(key) for a in cmdline(p))]
    assert len(found) == 1, f"expected one QEMU child with {key}, found {found}"
    return found[0]


@dataclass
class Booted:
    vm: Vm
    kernel: KernelArtifacts
    release: str  # the catalog's
    ready_release: str  # what wait_ready reported
    artifacts: Path


@pytest.fixture(scope="module", params=KERNELS, ids=[f"kernel-{k}" for k in KERNELS])
def booted(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    spec = cached_spec(Catalog.load().get(request.param), cache_dir())
    if spec is None:
        pytest.skip(f"kernel {request.param} not cached (run `pokelab images --kernel {request.param}`)")
    art = tmp_path_factory.mktemp(f"boot-{spec.id}") / "artifacts"
    # the release it resolved to, so the answer cannot move between the skip check and the boot
    vmspec, kernel = prepare_vm(KernelChoice(kernel=spec.release), VmOptions(), artifacts=art)
    vm = Vm(vmspec)
    try:
        vm.start()
        ready = vm.wait_ready()
        yield Booted(vm, kernel, spec.release, ready, art)
    finally:
        vm.close()


# --------------------------------------------------------------------------- the guest


def test_uname_is_catalog_release(booted: Booted) -> None:
    assert booted.ready_release == booted.release
    res = booted.vm.run("uname -r")
    assert res.status == 0, res.stderr
    assert res.stdout.strip() == booted.release


def test_console_log_has_banner(booted: Booted) -> None:
    log = booted.artifacts / "console.log"
    assert log.is_file()
    text = log.read_text(errors="replace")
    assert f"Linux version {booted.release}" in text
    assert f"POKELAB-READY {booted.release}" in text


def test_repro_script(booted: Booted) -> None:
    cfg = booted.vm.config
    assert cfg is not None
    repro = booted.artifacts / "repro.sh"
    assert repro.is_file()
    assert os.access(repro, os.X_OK), oct(repro.stat().st_mode)
    text = repro.read_text()
    assert text.startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(repro)], check=True, timeout=10)
    exec_line = [ln for ln in text.splitlines() if ln.startswith("exec ")]
    assert len(exec_line) == 1
    argv = shlex.split(exec_line[0])[1:]
    assert "-S" not in argv
    assert argv == [a for a in booted.vm.argv if a != "-S"]
    assert argv[argv.index("-gdb") + 1] == f"tcp:127.0.0.1:{cfg.gdb_port}"
    # the kernel's PVH copy (a stripped vmlinux, same build-id) where it has a PVH entry, else its bzImage
    image = Path(argv[argv.index("-kernel") + 1])
    assert image == booted.vm.spec.kernel_image
    assert image == booted.kernel.bzimage or image == pvh_image(booted.kernel, cache_dir())


# --------------------------------------------------------------------------- QEMU's sockets


def _listening(pid: int) -> list[tuple[str, str]]:
    """(netid, local address) of every listening socket of ``pid``, per ss."""
    out = subprocess.run(["ss", "-H", "-l", "-n", "-p", "-t", "-u", "-w", "-x"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    found = []
    for line in out.splitlines():
        if not re.search(rf"\bpid={pid},", line):
            continue
        fields = line.split()
        found.append((fields[0], fields[4]))
    return found


def test_qemu_listens_only_on_loopback_and_unix(booted: Booted) -> None:
    cfg = booted.vm.config
    assert cfg is not None
    pid = qemu_pid(booted.vm)
    socks = _listening(pid)
    assert socks, "ss shows no listening socket for QEMU"
    tcp_ports, unix_paths = set(), set()
    for netid, local in socks:
        assert "0.0.0.0" not in local and "[::]" not in local and not local.startswith("*:"), \
            f"QEMU listens on all addresses: {netid} {local}"
        if netid in ("tcp", "udp", "raw"):
            host, port = local.rsplit(":", 1)
            assert host == "127.0.0.1", f"QEMU listens on {netid} {local}"
            tcp_ports.add(int(port))
        else:
            assert netid.startswith("u_"), f"unexpected socket {netid} {local}"
            assert local.startswith(str(cfg.workdir) + "/"), f"unix socket outside workdir: {local}"
            unix_paths.add(local)
    assert tcp_ports == {cfg.gdb_port, cfg.ssh_port}
    assert unix_paths == {str(cfg.qmp_socket), str(cfg.serial_socket)}
    args = cmdline(pid)
    assert args[args.index("-gdb") + 1] == f"tcp:127.0.0.1:{cfg.gdb_port}"
    assert booted.vm.gdb_address == f"127.0.0.1:{cfg.gdb_port}"


def _gdb_packet(payload: str) -> bytes:
    return f"${payload}#{sum(payload.encode()) % 256:02x}".encode()


def test_gdb_port_is_the_gdbstub(booted: Booted) -> None:
    """The gdb port speaks the GDB remote protocol; detaching lets the guest run on."""
    cfg = booted.vm.config
    assert cfg is not None
    with socket.create_connection(("127.0.0.1", cfg.gdb_port), timeout=20) as s:
        s.sendall(_gdb_packet("?"))
        buf = b""
        end = time.monotonic() + 20
        while b"#" not in buf.lstrip(b"+") and time.monotonic() < end:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        reply = buf.lstrip(b"+")
        assert re.match(rb"\$[ST][0-9a-f]{2}", reply), buf
        s.sendall(b"+" + _gdb_packet("D"))
        s.settimeout(5)
        try:
            s.recv(4096)
        except OSError:
            pass
    assert booted.vm.qmp is not None
    end = time.monotonic() + 10
    while not booted.vm.qmp.cmd("query-status")["running"]:
        assert time.monotonic() < end, "guest stayed stopped after the GDB detach"
        time.sleep(0.1)
    assert booted.vm.run("echo alive", timeout=60).stdout == "alive\n"


# --------------------------------------------------------------------------- SSH


def test_put_copies_bytes_and_mode(booted: Booted, tmp_path: Path) -> None:
    data = os.urandom(200_000) + b"\0\n\r\xff end"
    booted.vm.ssh.put(data, "/tmp/pokelab-blob", mode=0o750)
    res = booted.vm.run("md5sum /tmp/pokelab-blob; stat -c %a /tmp/pokelab-blob")
    assert res.status == 0, res.stderr
    md5, mode = res.stdout.split()[0], res.stdout.split()[-1]
    assert md5 == hashlib.md5(data).hexdigest()
    assert mode == "750"

    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from \"$1\"\n")
    script.chmod(0o755)
    booted.vm.ssh.put_file(script, "/tmp/hello.sh")
    res = booted.vm.run("/tmp/hello.sh guest")
    assert (res.status, res.stdout) == (0, "hello from guest\n")


def test_exit_status_and_stderr_pass_through(booted: Booted) -> None:
    res = booted.vm.run("echo to-stdout; echo to-stderr >&2; exit 7")
    assert res.status == 7
    assert res.stdout == "to-stdout\n"
    assert res.stderr == "to-stderr\n"
    res = booted.vm.run("ls /no/such/path")
    assert res.status != 0 and "/no/such/path" in res.stderr and res.stdout == ""
    res = booted.vm.run("cat", stdin=b"piped\n")
    assert (res.status, res.stdout) == (0, "piped\n")
    with pytest.raises(InfraError, match=r"guest command failed \(3\).*boom"):
        booted.vm.check("echo boom >&2; exit 3")


def test_command_timeout_raises_infra_error(booted: Booted) -> None:
    t0 = time.monotonic()
    with pytest.raises(InfraError, match="timed out"):
        booted.vm.run("sleep 40", timeout=2)
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < 15, elapsed
    # the connection survives a timed-out command
    res = booted.vm.run("echo still-here", timeout=60)
    assert (res.status, res.stdout) == (0, "still-here\n")
    booted.vm.run("pkill -f 'sleep 40'", timeout=60)


# --------------------------------------------------------------------------- QEMU dies at start


def test_qemu_exit_at_start_fails_fast(tmp_path: Path) -> None:
    """A QEMU that rejects its argv is reported with its stderr at once, and nothing lingers."""
    spec0 = cached_spec(Catalog.load().default, cache_dir())
    if spec0 is None:
        pytest.skip("the default kernel is not cached")
    vmspec, _ = prepare_vm(KernelChoice(kernel=spec0.release), VmOptions(), artifacts=tmp_path / "art")
    vmspec = replace(vmspec, extra_qemu=("-no-such-qemu-option",))
    before = descendants(os.getpid())
    vm = Vm(vmspec)
    t0 = time.monotonic()
    try:
        with pytest.raises(InfraError, match="no-such-qemu-option"):
            vm.start()
    finally:
        vm.close()
    assert time.monotonic() - t0 < 15
    assert vm.config is not None and not vm.config.workdir.exists()
    assert descendants(os.getpid()) <= before
