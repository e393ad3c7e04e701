"""One typed request per run: which kernel, which VM, which scenario, where the artifacts go.

Built once, from argv (``cli``), a nightly cell, a bisect step, a bench column or a
pytest item, and never changed after: :func:`dataclasses.replace` (or
:meth:`RunRequest.but`) makes the next one.  :func:`.execute.execute` runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..core.fields import option
from ..core.trapdata import INJECT_EVERY, INJECTIONS
from ..host.meminfo import host_memory_mib
from ..machine.qemu import MACHINES, MAX_SMP
from ..machine.qemu_binary import check_given, executable
from .scenario import Scenario

ACCELS = ("auto", "tcg", "kvm")
TCG_THREADS = ("single", "multi")


@dataclass(frozen=True)
class KernelChoice:
    """``--kernel ID`` or ``--bzimage P --vmlinux P [--modules DIR]``; all None: the catalog's default.

    ``kernel``: a catalog id, a Debian ABI/release/package name, or ``custom-<id>``
    (``pokelab build-kernel``).  ``modules``: the build's ``lib/modules/<release>`` tree,
    for a kernel whose virtio drivers are modules (they then go into the initramfs).
    """

    kernel: str | None = field(default=None, metadata=option(
        "a catalog id from `pokelab kernels`; a line (7.3: its newest ABI with -dbg; 7.3-rt-amd64); a "
        "Debian ABI (6.1.0-57, 7.3.4+deb13, 6.1.0-57-rt-amd64) or package (linux-image-7.3.4+deb13-amd64); "
        "custom-<id>", metavar="ID"))
    bzimage: Path | None = field(default=None, metadata=option(
        "your own kernel image (with --vmlinux)", metavar="P", path="file"))
    vmlinux: Path | None = field(default=None, metadata=option(
        "its debug vmlinux (build-id must match)", metavar="P", path="file"))
    modules: Path | None = field(default=None, metadata=option(
        "with --bzimage: its lib/modules/<release> tree (virtio drivers as modules)", metavar="DIR",
        path="dir"))

    def check(self) -> None:
        """UsageError for a combination or a path that cannot work (before anything slow)."""
        if self.kernel is not None and not self.kernel.strip():
            raise UsageError("--kernel '': name a kernel (see: pokelab kernels)")
        if (self.bzimage or self.vmlinux) and self.kernel:
            raise UsageError("give either --kernel or --bzimage/--vmlinux, not both")
        if (self.bzimage is None) != (self.vmlinux is None):
            raise UsageError("--bzimage and --vmlinux go together")
        for path, what in ((self.bzimage, "--bzimage"), (self.vmlinux, "--vmlinux")):
            if path is not None and not path.is_file():
                raise UsageError(f"{what} {path}: no such file")
        if self.modules is not None and not (self.modules / "modules.dep").is_file():
            raise UsageError(f"--modules {self.modules}: no modules.dep there (a lib/modules/<release> "
                             "tree made by `make modules_install`)")
        if self.modules is not None and self.bzimage is None:
            raise UsageError("--modules goes with --bzimage/--vmlinux (a Debian kernel brings its own)")


@dataclass(frozen=True)
class VmOptions:
    """How the guest is run: vCPUs, RAM (MiB), accelerator, TCG threading, QEMU machine and binary.

    ``gdb_port``/``ssh_port``: fixed loopback ports (None: free ones).  ``qemu``: ``--qemu``, an
    executable file (None: :func:`orchestrator.machine.qemu_binary.select` chooses).  ``pvh``:
    boot the kernel's uncompressed ELF through its PVH entry where it has one
    (:func:`orchestrator.kernels.images.pvh_image`), else its bzImage.
    """

    smp: int = field(default=4, metadata=option("vCPUs", metavar="N", type=int))
    memory_mb: int = field(default=1024, metadata=option(
        "guest RAM, from 256 to this host's RAM (MemTotal)", flag="--memory", metavar="MIB", type=int))
    accel: str = field(default="auto", metadata=option(
        "auto: KVM where it was seen to boot a guest, else TCG", choices=ACCELS))
    tcg_thread: str = field(default="single", metadata=option(
        "TCG threading; 'multi' is known unstable for text_poke", choices=TCG_THREADS))
    machine: str = field(default="pc", metadata=option(
        "QEMU machine: pc (i440FX, virtio on PCI) or microvm (no PCI or legacy timers, virtio-mmio found "
        "through ACPI)", choices=MACHINES))
    qemu: Path | None = field(default=None, metadata=option(
        "this qemu-system-x86_64 (default: the host's if its gdbstub does not flush translated code at a "
        "stop, else the one `pokelab qemu` built)", metavar="PATH", type=executable))
    gdb_port: int | None = field(default=None, metadata=option("gdbstub port on 127.0.0.1", metavar="PORT",
                                                                type=int))
    ssh_port: int | None = field(default=None, metadata=option("SSH port on 127.0.0.1", metavar="PORT",
                                                                type=int))
    pvh: bool = True

    def check(self) -> None:
        """UsageError for values QEMU or the guest cannot take."""
        if not 1 <= self.smp <= MAX_SMP:
            raise UsageError(f"--smp must be 1..{MAX_SMP}, not {self.smp}")
        if self.memory_mb < 256:
            raise UsageError("--memory must be at least 256 MiB (the initramfs and the guest's tools)")
        if self.memory_mb > (most := host_memory_mib()):
            raise UsageError(f"--memory {self.memory_mb}: more than this host's RAM ({most} MiB)")
        for value, allowed, what in ((self.accel, ACCELS, "--accel"), (self.tcg_thread, TCG_THREADS,
                                     "--tcg-thread"), (self.machine, MACHINES, "--machine")):
            if value not in allowed:
                raise UsageError(f"{what} {value}: one of {', '.join(allowed)}")
        if self.accel == "kvm" and self.tcg_thread != "single":
            raise UsageError(f"--tcg-thread {self.tcg_thread} is for TCG: --accel kvm runs no TCG threads")
        if self.gdb_port is not None and self.gdb_port == self.ssh_port:
            raise UsageError(f"the gdbstub and SSH cannot share port {self.gdb_port}")
        if self.qemu is not None:
            check_given(self.qemu)


@dataclass(frozen=True)
class RunRequest:
    """One probed run of one scenario on one kernel.

    ``inject``: corrupt the emulation at every ``inject_every``-th eligible trap (None:
    :data:`INJECT_EVERY`; only with ``inject``) (a self-test: the run must end FAIL).
    ``workload``: a host file copied in and run pinned as the load.  ``info``: more keys of the
    verdict (a trigger's results, filled in during the run).
    ``baseline_cycles``: before the probe attaches, run the setup, this many cycles of the
    scenario's steps and the teardown on the booted guest under the same load, each step timed
    (``verdict.json`` ``baseline_steps``, as ``steps``): what the steps cost without the probe
    (``pokelab bench``'s ``probe_overhead``).  0: none.  Not for a scenario that watches a
    body site (its steps name a site the probe finds).
    """

    scenario: Scenario
    artifacts: Path
    kernel: KernelChoice = field(default_factory=KernelChoice)
    vm: VmOptions = field(default_factory=VmOptions)
    inject: str | None = field(default=None, metadata=option(
        "corrupt the emulation at chosen CALL traps (wrong-target: JMP32 ones too; self-test: must end "
        "FAIL)", choices=INJECTIONS))
    inject_every: int | None = field(default=None, metadata=option(
        f"with --inject: inject at every K-th eligible trap (default {INJECT_EVERY})", metavar="K", type=int))
    workload: Path | None = field(default=None, metadata=option(
        "a static binary or script to copy in and run pinned as the load", metavar="FILE", path="file"))
    info: Mapping[str, Any] = field(default_factory=dict)
    baseline_cycles: int = 0

    def check(self) -> None:
        """UsageError for anything wrong in the request itself (files, values): nothing is touched."""
        self.kernel.check()
        self.vm.check()
        if self.inject is not None and self.inject not in INJECTIONS:
            raise UsageError(f"--inject {self.inject}: one of {', '.join(INJECTIONS)}")
        if self.inject_every is not None and self.inject is None:
            raise UsageError("--inject-every goes with --inject MODE (it says how often to inject)")
        if self.inject_every is not None and self.inject_every < 1:
            raise UsageError("--inject-every must be at least 1")
        if self.workload is not None and not self.workload.is_file():
            raise UsageError(f"--workload {self.workload}: no such file")
        if self.baseline_cycles < 0:
            raise UsageError("baseline_cycles must be 0 or more")
        if self.baseline_cycles and self.scenario.watch_body:
            raise UsageError(f"scenario {self.scenario.name} watches a body site the probe finds: "
                             "its steps cannot run before the probe attaches (baseline_cycles)")

    def but(self, **changes: Any) -> RunRequest:
        """A copy with ``changes`` (``kernel=KernelChoice(...)``, ``artifacts=...``, ...)."""
        return replace(self, **changes)
