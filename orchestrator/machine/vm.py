"""A VM instance: owns one QEMU process and its console, QMP and SSH.

The contract, in the spirit of syzkaller's vmimpl.Instance:

* ``start()`` launches QEMU paused (``-S``), connects console and QMP, and, if
  ``resume``, lets the guest run.  An early QEMU exit becomes an error carrying
  QEMU's stderr; a port lost to another process is retried with new ports.
* ``wait_ready()`` waits for the init's readiness marker, then SSH.
* ``run()``/``check()`` act over SSH with deadlines (``vm.ssh.put()`` copies a file in).
* ``close()`` is idempotent, cleans up a half-started instance, and kills QEMU
  whatever the exit path; QEMU also dies with us through PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core import crash, watchdogs
from ..core.errors import BootError, InfraError, KernelCrash, UsageError
from ..host import procs
from ..host.timeouts import KVM, TCG, Timeouts
from . import qemu, qemu_binary
from .console import Console
from .qemu_binary import QemuBinary
from .qmp import Qmp
from .ssh import Result, Ssh

log = logging.getLogger(__name__)

READY = r"POKELAB-READY (\S+)"
INIT_FAIL = r"POKELAB-INIT-FAIL (.*)"


@dataclass(frozen=True)
class VmSpec:
    """What to boot and how.  ``kernel_image``: QEMU's ``-kernel``, a bzImage or an ELF kernel with a PVH
    entry (:func:`orchestrator.kernels.images.pvh_image`)."""

    kernel_image: Path
    initrd: Path
    ssh_key: Path
    artifacts: Path
    release: str = ""  # expected `uname -r`, if known
    smp: int = 4
    memory_mb: int = 1024
    accel: str = "tcg"
    tcg_thread: str = "single"
    machine: str = "pc"  # qemu.MACHINES
    gdb_port: int | None = None  # None: pick a free one
    ssh_port: int | None = None
    append: tuple[str, ...] = ()
    extra_qemu: tuple[str, ...] = field(default=())
    #: the QEMU binary, its ``-L`` dirs and version (``qemu_binary.select`` chooses it;
    #: None: ``qemu-system-x86_64`` on PATH, version unknown)
    qemu: QemuBinary | None = None

    @property
    def timeouts(self) -> Timeouts:
        return KVM if self.accel == "kvm" else TCG

    @property
    def watchdogs(self) -> watchdogs.GuestWatchdogs | None:
        """The guest's hang-detector thresholds, scaled to this machine and its QEMU (None: kernel
        defaults); a QEMU not yet described (``qemu`` None) counts as one that flushes."""
        flushes = self.qemu.flushes if self.qemu is not None else None
        return watchdogs.for_machine(self.accel, self.tcg_thread, self.smp,
                                     watchdogs.probe_overhead(flushes))

    @property
    def qemu_record(self) -> dict[str, Any]:
        """``{"qemu": path, "qemu_version": "10.2.2", ..., "machine": "pc"}``: what every verdict
        says it ran on."""
        if self.qemu is None:
            return {"qemu": qemu.QEMU, "qemu_version": None, "qemu_tb_flushes_per_stop": None,
                    "machine": self.machine}
        return {**self.qemu.record(), "machine": self.machine}


class Vm:
    def __init__(self, spec: VmSpec) -> None:
        self.spec = spec
        self.timeouts = spec.timeouts
        self.config: qemu.QemuConfig | None = None
        self.argv: list[str] = []
        self._child: procs.Child | None = None
        self._workdir: Path | None = None
        self.console: Console | None = None
        self.qmp: Qmp | None = None
        self._ssh: Ssh | None = None
        self._closed = False
        self.release: str | None = None
        self.boot_seconds: float | None = None
        self._t0 = 0.0

    # -- life cycle -------------------------------------------------------
    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def make_config(self, gdb_port: int, ssh_port: int, workdir: Path) -> qemu.QemuConfig:
        """The QEMU config; the scaled watchdog thresholds come before the user's words (theirs win)."""
        s = self.spec
        wd = s.watchdogs
        tsc_khz = None
        if s.machine == "microvm" and s.accel == "tcg":
            from ..host.tsc import host_tsc_khz

            tsc_khz = host_tsc_khz()
        return qemu.QemuConfig(
            kernel_image=s.kernel_image, initrd=s.initrd, workdir=workdir, gdb_port=gdb_port,
            ssh_port=ssh_port, smp=s.smp, memory_mb=s.memory_mb, accel=s.accel,
            tcg_thread=s.tcg_thread, machine=s.machine, tsc_khz=tsc_khz,
            append=(wd.kernel_args() if wd else ()) + s.append,
            extra=s.extra_qemu, qemu=str(s.qemu.path) if s.qemu else qemu.QEMU,
            data_dirs=tuple(str(d) for d in s.qemu.data_dirs) if s.qemu else ())

    def start(self, resume: bool = True) -> None:
        self.spec.artifacts.mkdir(parents=True, exist_ok=True)
        if self.spec.qemu is None:
            found = Path(procs.which(qemu.QEMU, "qemu-system-x86"))
            self.spec = replace(self.spec, qemu=QemuBinary(found, "", "host"))
        elif self.spec.qemu.version and self.spec.qemu.flushes:
            qemu_binary.warn_once(self.spec.qemu)
        for path, what in ((self.spec.kernel_image, "kernel image"), (self.spec.initrd, "initramfs")):
            if not path.is_file():
                raise InfraError(f"{what} {path} does not exist")
        if self.spec.gdb_port is not None and self.spec.gdb_port == self.spec.ssh_port:
            raise UsageError(f"the gdbstub and SSH cannot share port {self.spec.gdb_port}")
        if self.spec.gdb_port is not None:
            qemu.check_port_free(self.spec.gdb_port)
        if self.spec.ssh_port is not None:
            qemu.check_port_free(self.spec.ssh_port)
        self._workdir = Path(tempfile.mkdtemp(prefix="pokelab-"))
        for attempt in range(3):
            gdb_port = self.spec.gdb_port or qemu.free_port()
            ssh_port = self.spec.ssh_port or qemu.free_port()
            self.config = self.make_config(gdb_port, ssh_port, self._workdir)
            self.argv = qemu.build_argv(self.config)
            (self.spec.artifacts / "repro.sh").write_text(
                qemu.repro_script(self.argv, f"kernel {self.spec.release or self.spec.kernel_image}"))
            os.chmod(self.spec.artifacts / "repro.sh", 0o755)
            stderr = open(self.spec.artifacts / "qemu.stderr", "wb")
            self._t0 = time.monotonic()
            self._child = procs.Child(self.argv, name="qemu", stderr=stderr)
            stderr.close()
            try:
                self.qmp = Qmp(self.config.qmp_socket, self.spec.artifacts / "qmp.jsonl",
                               self.timeouts.get("qmp"),
                               abort=lambda: self._child is None or self._child.poll() is not None)
                break
            except InfraError:
                err = self._qemu_stderr()
                self._child.close(grace=0.5)
                self._child = None
                if "Address already in use" in err and attempt < 2 and not (
                        self.spec.gdb_port or self.spec.ssh_port):
                    log.info("a port was taken meanwhile; retrying with new ports")
                    continue
                if "Address already in use" in err:
                    raise InfraError(f"QEMU could not bind its ports: {err.strip()}") from None
                raise InfraError("QEMU exited at start: " + (err.strip().splitlines() or ["?"])[-1],
                                 err) from None
        assert self.config is not None
        self.console = Console(self.config.serial_socket, self.spec.artifacts / "console.log",
                               self.timeouts.get("qemu_start"))
        if resume:
            self.resume()

    def resume(self) -> None:
        assert self.qmp is not None
        self.qmp.cmd("cont")

    def _qemu_stderr(self) -> str:
        try:
            return (self.spec.artifacts / "qemu.stderr").read_text(errors="replace")
        except OSError:
            return ""

    def qemu_exited(self) -> str | None:
        """A one-line reason if QEMU is gone, else None."""
        if self._child is None:
            return "QEMU not started"
        rc = self._child.poll()
        if rc is None:
            return None
        err = self._qemu_stderr().strip().splitlines()
        return f"QEMU exited with status {rc}" + (f": {err[-1]}" if err else "")

    def crashes(self) -> list[crash.Crash]:
        return crash.scan(self.console.lines) if self.console else []

    def wait_ready(self) -> str:
        """Wait for the readiness marker and SSH; return the guest's ``uname -r``."""
        assert self.console is not None and self.config is not None
        con = self.console
        m = con.wait_for(f"{READY}|{INIT_FAIL}|Kernel panic", self.timeouts.get("boot_marker"),
                         abort=self.qemu_exited)
        if m is None or not m.group(0).startswith("POKELAB-READY"):
            found = self.crashes()
            if found:
                raise KernelCrash(f"kernel crashed during boot: {found[0].title}", con.tail())
            limit = self.timeouts.get("boot_marker")
            why = self.qemu_exited() or (m.group(0) if m else f"no readiness marker within {limit:.0f} s")
            raise BootError(f"guest did not boot: {why}", con.tail())
        self.release = m.group(1)
        if self.spec.release and self.release != self.spec.release:
            raise BootError(f"guest runs {self.release}, expected {self.spec.release}")
        self._ssh = Ssh(self.config.ssh_port, self.spec.ssh_key, self.timeouts.get("ssh_connect"))
        self.boot_seconds = time.monotonic() - self._t0
        return self.release

    @property
    def ssh(self) -> Ssh:
        if self._ssh is None:
            raise InfraError("SSH is not connected (wait_ready first)")
        return self._ssh

    def run(self, command: str, timeout: float | None = None, stdin: bytes | None = None) -> Result:
        return self.ssh.run(command, timeout if timeout is not None else self.timeouts.get("ssh_command"),
                            stdin=stdin)

    def check(self, command: str, timeout: float | None = None) -> str:
        """Run a guest command that must succeed; its stdout."""
        res = self.run(command, timeout)
        if res.status != 0:
            raise InfraError(f"guest command failed ({res.status}): {command}: {res.stderr.strip()[-200:]}")
        return res.stdout

    def qemu_cpu_seconds(self) -> float | None:
        """QEMU's CPU time (user + system, s) since it started; None if it is not running."""
        return self._child.cpu_seconds() if self._child is not None else None

    def tb_flush_count(self) -> int | None:
        """QEMU's ``TB flush count`` (HMP ``info jit``): translation-cache flushes since start.

        None under KVM (no translation cache).
        """
        if self.spec.accel != "tcg":
            return None
        assert self.qmp is not None
        return qemu_binary.parse_tb_flush_count(qemu_binary.info_jit(self.qmp))

    @property
    def gdb_address(self) -> str:
        assert self.config is not None
        return f"127.0.0.1:{self.config.gdb_port}"

    def gdb_command(self, vmlinux: Path) -> str:
        """The line that attaches a GDB to this guest."""
        return f"gdb {vmlinux} -ex 'target remote {self.gdb_address}'"

    def connect_hint(self, vmlinux: Path | None) -> str:
        assert self.config is not None
        lines = [f"ssh -i {self.spec.ssh_key} -p {self.config.ssh_port} -o StrictHostKeyChecking=no "
                 f"-o UserKnownHostsFile=/dev/null root@127.0.0.1"]
        if vmlinux is not None:
            lines.append(self.gdb_command(vmlinux))
        lines.append(f"console: socat - UNIX-CONNECT:{self.config.serial_socket}  (log: "
                     f"{self.spec.artifacts / 'console.log'})")
        return "\n".join(lines)

    def close(self) -> None:
        """Stop everything this instance started. Idempotent; safe on a half-built instance."""
        if self._closed:
            return
        self._closed = True
        if self._ssh is not None:
            self._ssh.close()
        if self.qmp is not None and self._child is not None and self._child.poll() is None:
            try:
                self.qmp.cmd("quit")
            except InfraError:
                pass
        if self._child is not None:
            self._child.wait(self.timeouts.get("shutdown") if self._child.poll() is None else 0)
            self._child.close(grace=1.0)
        if self.qmp is not None:
            self.qmp.close()
        if self.console is not None:
            self.console.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
