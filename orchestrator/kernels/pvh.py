"""The kernel QEMU boots through its PVH entry: the vmlinux stripped, cached beside it.

QEMU's ``-kernel`` takes an ELF kernel with a Xen ``PHYS32_ENTRY`` note (Debian's x86 kernels,
``CONFIG_PVH``) and jumps to that 32-bit entry with the command line and initramfs in an
``hvm_start_info``: no bzImage setup code and no decompressor (0.3-0.5 s of a TCG boot here).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..core import buildid
from ..core.errors import InfraError
from ..host.cache import file_lock
from .images import KernelArtifacts, _run

log = logging.getLogger(__name__)

#: what :func:`pvh_image` names its copy: ``<vmlinux name>.pvh-<build-id, 16 hex digits>``
PVH_SUFFIX = ".pvh-"


def has_pvh_entry(vmlinux: Path) -> bool:
    """Whether this ELF kernel has a PVH entry note; InfraError if it is not an ELF file."""
    with open(vmlinux, "rb") as f:
        try:
            return buildid.pvh_entry(f) is not None
        except buildid.ParseError as exc:
            raise InfraError(f"{vmlinux}: {exc}") from exc


def pvh_image(kernel: KernelArtifacts, cache: Path) -> Path | None:
    """An uncompressed kernel QEMU boots through its PVH entry (``-kernel`` an ELF), or None.

    None when the vmlinux has no PVH entry note (``XEN_ELFNOTE_PHYS32_ENTRY``; Debian's x86
    kernels have it, ``CONFIG_PVH``): boot the bzImage then.  The copy is the vmlinux with
    ``objcopy --strip-all`` (its loadable segments and notes, build-id included: 50-60 MB
    instead of 0.5-1 GB of DWARF), made once and kept beside a cached kernel's vmlinux
    (``kernels/<release>/vmlinux-<release>.pvh-<build-id>``) or, for a vmlinux outside the
    cache, under ``kernels/pvh/``.  Booting it skips the bzImage's decompressor (0.3-0.5 s of
    a TCG boot).  InfraError if objcopy fails or the copy's build-id is not the kernel's.
    """
    if not has_pvh_entry(kernel.vmlinux):
        return None
    name = f"{kernel.vmlinux.name}{PVH_SUFFIX}{kernel.build_id[:16]}"
    kernels = (cache / "kernels").resolve()
    home = kernel.vmlinux.parent if kernel.vmlinux.resolve().is_relative_to(kernels) else kernels / "pvh"
    out = home / name
    if out.is_file():
        return out
    home.mkdir(parents=True, exist_ok=True)
    with file_lock(home / f".{name}.lock"):
        if out.is_file():
            return out
        t0 = time.monotonic()
        part = home / f".{name}.{os.getpid()}"
        try:
            _run(["objcopy", "--strip-all", kernel.vmlinux, part], "objcopy --strip-all (PVH kernel)")
            with open(part, "rb") as f:
                got = buildid.elf_build_id(f)
            if got != kernel.build_id:
                raise InfraError(f"the stripped {kernel.vmlinux.name} has build-id {got}, "
                                 f"not {kernel.build_id}")
            os.replace(part, out)
        finally:
            part.unlink(missing_ok=True)
        log.info("%s: PVH boot image %s (%d MB) in %.1fs", kernel.release, out.name,
                 out.stat().st_size >> 20, time.monotonic() - t0)
    return out
