"""From user options to a bootable VmSpec: kernel artifacts, initramfs, key, accelerator."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BootError, InfraError, KernelCrash, UsageError
from ..host.cache import cache_dir
from ..kernels import images, rootfs
from ..kernels.catalog import Catalog
from ..kernels.debian import resolve_spec
from ..machine import qemu, qemu_binary
from ..machine.qemu_binary import QemuBinary
from ..machine.vm import Vm, VmSpec

log = logging.getLogger(__name__)

#: (kernel, cache) -> {guest path: host file}: files that depend on the kernel
KernelFiles = Callable[[images.KernelArtifacts, Path], Mapping[str, Path]]


@dataclass(frozen=True)
class KernelChoice:
    """``--kernel ID`` or ``--bzimage P --vmlinux P [--modules DIR]``.

    ``modules``: the build's ``lib/modules/<release>`` tree, for a kernel whose virtio
    drivers are modules (they then go into the initramfs).
    """

    kernel: str | None = None
    bzimage: Path | None = None
    vmlinux: Path | None = None
    modules: Path | None = None


def resolve_kernel(choice: KernelChoice, cache: Path | None = None) -> images.KernelArtifacts:
    cache = cache or cache_dir()
    if choice.bzimage or choice.vmlinux:
        if choice.kernel:
            raise UsageError("give either --kernel or --bzimage/--vmlinux, not both")
        if not (choice.bzimage and choice.vmlinux):
            raise UsageError("--bzimage and --vmlinux go together")
        return images.artifacts_from_paths(choice.bzimage, choice.vmlinux, choice.modules)
    if choice.modules:
        raise UsageError("--modules goes with --bzimage/--vmlinux (a Debian kernel brings its own)")
    if choice.kernel and choice.kernel.startswith("custom-"):  # built by `pokelab build-kernel`
        return images.custom_kernel(choice.kernel, cache)
    catalog = Catalog.load()
    request = catalog.lookup(choice.kernel) if choice.kernel else catalog.default
    return images.ensure_kernel(resolve_spec(request, cache), cache)


def default_artifacts(command: str) -> Path:
    base = Path(os.environ.get("POKELAB_ARTIFACTS", "artifacts"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (base / f"{stamp}-{command}-{os.getpid()}").resolve()


def choose_accel(requested: str, kernel: images.KernelArtifacts, initrd: Path, key: Path,
                 cache: Path, qemu_bin: QemuBinary | None = None) -> str:
    """``tcg`` or ``kvm``.  ``auto`` uses KVM only where it was seen to boot this kind of guest.

    On a nested PVM host ``/dev/kvm`` opens but Linux guests hang or die in
    early boot, so the probe boots a real guest to its readiness marker (once
    per host kernel and QEMU, cached in ``kvm-probe.json``).
    """
    if requested in ("tcg", "kvm"):
        return requested
    if requested != "auto":
        raise UsageError(f"unknown accelerator '{requested}' (auto, tcg or kvm)")
    if not qemu.kvm_device_usable():
        return "tcg"
    host = f"{os.uname().release} {os.uname().version}"
    stamp = cache / "kvm-probe.json"
    try:
        known = json.loads(stamp.read_text())
        if known.get("host") == host:
            return "kvm" if known["works"] else "tcg"
    except (OSError, ValueError, KeyError):
        pass
    works = False
    spec = VmSpec(bzimage=kernel.bzimage, initrd=initrd, ssh_key=key,
                  artifacts=cache / "kvm-probe", smp=1, accel="kvm",
                  qemu=qemu_bin)
    vm = Vm(spec)
    try:
        vm.start()
        m = vm.console.wait_for(r"POKELAB-READY", 20.0, abort=vm.qemu_exited) if vm.console else None
        works = m is not None
    except (InfraError, BootError, KernelCrash):
        works = False
    finally:
        vm.close()
    stamp.write_text(json.dumps({"host": host, "works": works, "probed": time.time()}))
    log.info("KVM %s here; using %s", "boots guests" if works else "does not boot guests",
             "kvm" if works else "tcg")
    return "kvm" if works else "tcg"


def prepare(choice: KernelChoice, *, artifacts: Path, smp: int = 4, accel: str = "auto",
            tcg_thread: str = "single", machine: str = "pc", memory_mb: int = 1024,
            gdb_port: int | None = None,
            ssh_port: int | None = None, extra_files: Mapping[str, Path] | None = None,
            append: tuple[str, ...] = (),
            kernel_files: KernelFiles | None = None,
            qemu_path: Path | None = None) -> tuple[VmSpec, images.KernelArtifacts]:
    """Fetch/build what the guest needs (cached) and describe the VM to boot.

    ``kernel_files(kernel, cache)`` adds guest files that depend on the kernel (a module).
    ``qemu_path`` (``--qemu``) overrides the QEMU choice of :func:`qemu_binary.select`.
    """
    cache = cache_dir()
    kernel = resolve_kernel(choice, cache)
    key = rootfs.ensure_ssh_key(cache)
    extra = dict(extra_files or {})
    if kernel_files is not None:
        extra.update(kernel_files(kernel, cache))
    initrd = rootfs.ensure_initramfs(kernel, cache, extra)
    qemu_bin = qemu_binary.select(qemu_path, cache)
    chosen = choose_accel(accel, kernel, initrd, key, cache, qemu_bin)
    spec = VmSpec(bzimage=kernel.bzimage, initrd=initrd, ssh_key=key, artifacts=artifacts,
                  release=kernel.release, smp=smp, memory_mb=memory_mb, accel=chosen,
                  tcg_thread=tcg_thread, machine=machine, gdb_port=gdb_port, ssh_port=ssh_port,
                  append=append,
                  qemu=qemu_bin)
    return spec, kernel
