"""The guest's ftrace_ops module: images/modules/pokelab_ops, built out of tree on the host.

It is built against Debian's ``linux-headers-<release>`` (installed with
apt-get when missing), or for a kernel made by ``pokelab build-kernel``
(``custom-*``) against the module build files kept with it
(``kernels/custom-<id>/build``, see extmod.py), and cached by the hash of its
source and the kernel::

    <cache>/modules/<release>[-<build-id12>]/<source-hash>/pokelab_ops.ko

A user's own ``--bzimage/--vmlinux`` build (``custom``) comes with neither: Unsupported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from . import procs
from .errors import InfraError, Unsupported
from .images import KernelArtifacts
from .kernels import images_dir

log = logging.getLogger(__name__)

NAME = "pokelab_ops"
HEADERS_INSTALL_TIMEOUT = 600.0
BUILD_TIMEOUT = 300.0


def is_custom(kernel_id: str) -> bool:
    """A user's build (``custom``) or one made by ``pokelab build-kernel`` (``custom-*``).  Pure."""
    return kernel_id == "custom" or kernel_id.startswith("custom-")


def source_dir() -> Path:
    return images_dir() / "modules" / NAME


def source_hash(files: dict[str, bytes], release: str) -> str:
    """16 hex digits over the release and every source file (name and content).  Pure."""
    h = hashlib.sha256(f"release\0{release}\0".encode())
    for name in sorted(files):
        h.update(f"{name}\0{len(files[name])}\0".encode())
        h.update(files[name])
    return h.hexdigest()[:16]


def module_path(cache: Path, release: str, digest: str) -> Path:
    """Where the built module for this release and source lives.  Pure."""
    return cache / "modules" / release / digest / f"{NAME}.ko"


def headers_package(release: str) -> str:
    return f"linux-headers-{release}"


def headers_dir(release: str) -> Path:
    return Path("/usr/src") / headers_package(release)


def _source_files() -> dict[str, bytes]:
    src = source_dir()
    return {p.name: p.read_bytes() for p in sorted(src.iterdir())
            if p.is_file() and p.name in (f"{NAME}.c", "Kbuild")}


def ensure_headers(release: str) -> Path:
    """``/usr/src/linux-headers-<release>``, installed with apt-get if missing."""
    kdir = headers_dir(release)
    if (kdir / "Makefile").is_file():
        return kdir
    if os.geteuid() != 0:
        raise InfraError(f"{headers_package(release)} is not installed and installing it needs root "
                         f"(apt-get install {headers_package(release)})")
    apt = procs.which("apt-get", "apt")
    t = time.monotonic()
    env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive", apt, "install", "-y", "-q",
               "--no-install-recommends", headers_package(release)]
    try:
        procs.run(env_cmd, timeout=HEADERS_INSTALL_TIMEOUT,
                  what=f"installing {headers_package(release)}")
    except InfraError:
        # the package lists may be stale: refresh once and retry
        procs.run([apt, "update", "-q"], timeout=HEADERS_INSTALL_TIMEOUT, what="apt-get update")
        procs.run(env_cmd, timeout=HEADERS_INSTALL_TIMEOUT,
                  what=f"installing {headers_package(release)}")
    log.info("installed %s in %.1f s", headers_package(release), time.monotonic() - t)
    if not (kdir / "Makefile").is_file():
        raise InfraError(f"{headers_package(release)} installed but {kdir}/Makefile is missing")
    return kdir


def custom_build_dir(kernel: KernelArtifacts) -> Path:
    """The module build files kept with a ``pokelab build-kernel`` kernel; Unsupported without them."""
    if kernel.id == "custom":
        raise Unsupported("the pokelab_ops module needs Debian's linux-headers or a kernel built by "
                          "`pokelab build-kernel`: a --bzimage/--vmlinux build has neither")
    kdir = kernel.vmlinux.parent / "build"
    if not (kdir / "Makefile").is_file():
        raise Unsupported(f"{kernel.id} has no module build files ({kdir}): it was built before "
                          "pokelab kept them; build it again with `pokelab build-kernel`")
    return kdir


def ensure_module(kernel: KernelArtifacts, cache: Path) -> Path:
    """Path of ``pokelab_ops.ko`` built for ``kernel`` (built once per source and release)."""
    files = _source_files()
    if f"{NAME}.c" not in files:
        raise InfraError(f"module source {source_dir() / (NAME + '.c')} is missing")
    if is_custom(kernel.id):
        # builds share release strings (patched or not): the build-id tells them apart
        key = f"{kernel.release}-{kernel.build_id[:12]}"
        kdir = custom_build_dir(kernel)
    else:
        key, kdir = kernel.release, None
    out = module_path(cache, key, source_hash(files, key))
    if out.is_file():
        return out
    kdir = kdir or ensure_headers(kernel.release)
    make = procs.which("make", "make")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pokelab-kmod-", dir=out.parent) as tmp:
        build = Path(tmp)
        for name, data in files.items():
            (build / name).write_bytes(data)
        t = time.monotonic()
        try:
            procs.run([make, "-C", str(kdir), f"M={build}", "modules"], timeout=BUILD_TIMEOUT,
                      what=f"building {NAME}.ko for {kernel.release}")
        except InfraError as exc:
            raise InfraError(f"building {NAME}.ko for {kernel.release} failed", exc.tail) from None
        log.info("built %s.ko for %s in %.1f s", NAME, kernel.release, time.monotonic() - t)
        ko = build / f"{NAME}.ko"
        if not ko.is_file():
            raise InfraError(f"building {NAME}.ko for {kernel.release}: make succeeded but no .ko")
        tmp_out = out.with_suffix(".tmp")
        shutil.copyfile(ko, tmp_out)
        tmp_out.rename(out)
    return out
