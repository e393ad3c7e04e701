"""From a request to a bootable VmSpec: kernel artifacts, initramfs, key, QEMU, accelerator.

:func:`prepare` is the one preparation of a run (:class:`.request.RunRequest`);
:func:`prepare_vm` the same for a guest with no scenario (``pokelab boot``, ``run-cmd``, bench).
Everything fetched or built is cached (:mod:`orchestrator.host.cache`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BootError, InfraError, KernelCrash, UsageError
from ..host import userpaths
from ..host.cache import cache_dir
from ..kernels import images, loadgen, pvh, rootfs
from ..kernels.catalog import Catalog
from ..kernels.debian import resolve_dry, resolve_spec
from ..machine import qemu, qemu_binary
from ..machine.qemu_binary import QemuBinary
from ..machine.vm import Vm, VmSpec
from .request import KernelChoice, RunRequest, VmOptions
from .scenario import guest_files

log = logging.getLogger(__name__)

#: (kernel, cache) -> {guest path: host file}: files that depend on the kernel
KernelFiles = Callable[[images.KernelArtifacts, Path], Mapping[str, Path]]


def resolve_kernel(choice: KernelChoice, cache: Path | None = None) -> images.KernelArtifacts:
    """The kernel's artifacts, fetched (Debian) or found (built here, given paths) as needed."""
    cache = cache or cache_dir()
    choice.check()
    if choice.bzimage and choice.vmlinux:
        return images.artifacts_from_paths(choice.bzimage, choice.vmlinux, choice.modules)
    if choice.kernel and choice.kernel.startswith("custom-"):  # built by `pokelab build-kernel`
        return images.custom_kernel(choice.kernel, cache)
    catalog = Catalog.load()
    request = catalog.lookup(choice.kernel) if choice.kernel else catalog.default
    return images.ensure_kernel(resolve_spec(request, cache), cache)


def default_artifacts(command: str) -> Path:
    """``<$POKELAB_ARTIFACTS or ./artifacts>/<stamp>-<command>-<pid>`` (absolute), not created.

    Raises UsageError if ``$POKELAB_ARTIFACTS`` is not a directory that exists and is writable,
    or can be created (checked as ``--artifacts`` is).
    """
    env = os.environ.get("POKELAB_ARTIFACTS")
    if env == "":
        raise UsageError("$POKELAB_ARTIFACTS is set but empty (unset it for ./artifacts)")
    if env is not None:
        userpaths.env_dir("POKELAB_ARTIFACTS", env)
    base = Path(env if env is not None else "artifacts")
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
    host = qemu_binary.kvm_probe_key(qemu_bin)
    stamp = cache / "kvm-probe.json"
    try:
        known = json.loads(stamp.read_text())
        if known.get("host") == host:
            return "kvm" if known["works"] else "tcg"
    except (OSError, ValueError, KeyError):
        pass
    works = False
    spec = VmSpec(kernel_image=kernel.bzimage, initrd=initrd, ssh_key=key,
                  artifacts=cache / "kvm-probe", smp=1, accel="kvm", machine="pc",
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


def check_ports(vm: VmOptions) -> None:
    """UsageError if a fixed ``--gdb-port``/``--ssh-port`` is taken (before anything slow)."""
    vm.check()
    for port in (vm.gdb_port, vm.ssh_port):
        if port is not None:
            qemu.check_port_free(port)


def prepare_vm(choice: KernelChoice, vm: VmOptions, *, artifacts: Path,
               extra_files: Mapping[str, Path] | None = None, append: tuple[str, ...] = (),
               kernel_files: KernelFiles | None = None) -> tuple[VmSpec, images.KernelArtifacts]:
    """Fetch/build what the guest needs (cached) and describe the VM to boot.

    ``extra_files``: {guest path: host file} put into the initramfs; ``kernel_files(kernel,
    cache)`` adds those that depend on the kernel (a module built for it).  Raises
    UsageError for bad input (checked first), InfraError/Unsupported for what cannot be had.
    """
    choice.check()
    check_ports(vm)
    qemu_path = qemu_binary.check_given(vm.qemu) if vm.qemu is not None else None
    cache = cache_dir()
    kernel = resolve_kernel(choice, cache)
    key = rootfs.ensure_ssh_key(cache)
    extra = dict(extra_files or {})
    if kernel_files is not None:
        extra.update(kernel_files(kernel, cache))
    initrd = rootfs.ensure_initramfs(kernel, cache, extra)
    qemu_bin = qemu_binary.select(qemu_path, cache)
    chosen = choose_accel(vm.accel, kernel, initrd, key, cache, qemu_bin)
    image = (pvh.pvh_image(kernel, cache) if vm.pvh else None) or kernel.bzimage
    machine = vm.machine
    if machine == "microvm" and images.has_virtio_mmio(kernel) is False:
        log.warning("%s has no virtio-mmio driver (CONFIG_VIRTIO_MMIO) for microvm's devices: "
                    "booting it on pc", kernel.release)
        machine = "pc"
    spec = VmSpec(kernel_image=image, initrd=initrd, ssh_key=key, artifacts=artifacts,
                  release=kernel.release, smp=vm.smp, memory_mb=vm.memory_mb, accel=chosen,
                  tcg_thread=vm.tcg_thread, machine=machine, gdb_port=vm.gdb_port,
                  ssh_port=vm.ssh_port, append=append, qemu=qemu_bin)
    return spec, kernel


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` made for a run: the VM to boot and the kernel's artifacts."""

    spec: VmSpec
    kernel: images.KernelArtifacts


def prepare(request: RunRequest) -> Prepared:
    """Everything a run needs, cached: the kernel, the load generator and the scenario's guest files
    (our modules, built for this kernel) in the initramfs, the QEMU binary, the accelerator.

    Raises UsageError for a bad request (checked before anything is fetched or built).
    """
    request.check()
    sc = request.scenario
    extra = {loadgen.GUEST_PATH: loadgen.ensure_loadgen(cache_dir())}
    spec, kernel = prepare_vm(request.kernel, request.vm, artifacts=request.artifacts, extra_files=extra,
                              kernel_files=lambda k, c: guest_files(sc, k, c))
    return Prepared(spec, kernel)


def dry_run_argv(choice: KernelChoice, vm: VmOptions, artifacts: Path) -> list[str]:
    """``--dry-run``: the QEMU command line a run would use, with nothing fetched, built, booted or written.

    The kernel is the cached one (or where it would be put; its PVH copy, made on first use,
    with ``<build-id>`` in its name, as if the vmlinux had a PVH entry); the initramfs, whose name hashes
    files made on first use, is shown as a pattern; ``--accel auto`` is what the last KVM probe
    said (TCG if none ran); the QEMU is the one :func:`qemu_binary.select` would take, not measured.
    Raises UsageError for bad input, as a real run would.
    """
    choice.check()
    check_ports(vm)
    cache = cache_dir(create=False)
    # the PVH image is named, not made: a vmlinux outside the cache has its copy under kernels/pvh
    pvh_name = f"{pvh.PVH_SUFFIX}<build-id>"
    machine = vm.machine
    vmlinux: Path | None = choice.vmlinux
    if choice.bzimage and choice.vmlinux:
        images.vmlinux_info(choice.vmlinux)  # not an ELF with a build-id: UsageError, as a real run
        bzimage, release = choice.bzimage, "<release>"
        pvh_path = cache / "kernels" / "pvh" / f"{choice.vmlinux.name}{pvh_name}"
    elif choice.kernel and choice.kernel.startswith("custom-"):
        k = images.custom_kernel(choice.kernel, cache)
        bzimage, release, vmlinux = k.bzimage, k.release, k.vmlinux
        if images.has_virtio_mmio(k) is False:  # as prepare_vm does
            machine = "pc"
        pvh_path = k.vmlinux.with_name(f"{k.vmlinux.name}{pvh_name}")
    else:
        catalog = Catalog.load()
        request = catalog.lookup(choice.kernel) if choice.kernel else catalog.default  # unknown: usage error
        spec = resolve_dry(request, cache)  # from the lists as they are; a kernel they lack: usage error
        rel = spec.release if spec is not None else f"<{request.id}: resolved when first fetched>"
        bzimage, release = cache / "kernels" / rel / "boot" / f"vmlinuz-{rel}", rel
        pvh_path = cache / "kernels" / rel / f"vmlinux-{rel}{pvh_name}"
    # a Debian kernel's vmlinux (maybe not fetched yet) is taken to have a PVH entry: they do
    if vm.pvh and (vmlinux is None or not vmlinux.is_file() or pvh.has_pvh_entry(vmlinux)):
        bzimage = pvh_path
    if vm.qemu is not None:
        qpath = qemu_binary.check_given(vm.qemu)
    else:
        qpath = qemu_binary.built_path(cache) or Path(qemu.QEMU)
    accel = vm.accel
    if accel == "auto":
        try:
            accel = "kvm" if json.loads((cache / "kvm-probe.json").read_text()).get("works") else "tcg"
        except (OSError, ValueError, AttributeError):
            accel = "tcg"
    spec_ = VmSpec(kernel_image=bzimage, initrd=cache / "initramfs" / f"initramfs-{release}-<hash>.cpio",
                   ssh_key=cache / "ssh" / rootfs.KEY_NAME, artifacts=artifacts, release=release, smp=vm.smp,
                   memory_mb=vm.memory_mb, accel=accel, tcg_thread=vm.tcg_thread, machine=machine,
                   gdb_port=vm.gdb_port, ssh_port=vm.ssh_port,
                   qemu=qemu_binary.known(qpath, "dry-run", cache) or QemuBinary(qpath, "", "dry-run"))
    config = Vm(spec_).make_config(vm.gdb_port or 1234, vm.ssh_port or 10022, Path("/tmp/pokelab-XXXX"))
    return qemu.build_argv(config)
