"""Our guest modules (images/modules/<name>: ``pokelab_ops``, ``pokelab_lp``), built out of tree on the host.

A Debian kernel's module is built in a build root of the Debian suite whose
compiler built the kernel (``host/buildroot.py``: debootstrap, the headers'
.debs unpacked beside it, ``make`` under bwrap), on any host: the host's own
compiler and apt configuration are never used.  A kernel made by ``pokelab
build-kernel`` (``custom-*``) was built with the host's compiler, so its
module is built on the host against the module build files kept with it
(``kernels/custom-<id>/build``, see extmod.py).  Either is cached by the hash
of its source, the kernel and the way it was built::

    <cache>/modules/<release>[-<build-id12>]/<source-hash>/<name>.ko

A user's own ``--bzimage/--vmlinux`` build (``custom``) comes with neither: Unsupported.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.errors import InfraError, Unsupported
from ..host import buildroot, procs
from ..host.apt import Apt
from ..host.cache import images_dir
from .images import KernelArtifacts

log = logging.getLogger(__name__)

NAME = "pokelab_ops"
#: the livepatch module (images/modules/pokelab_lp): patches __do_sys_getpid, counts its calls
LIVEPATCH = "pokelab_lp"
#: every module under images/modules that a scenario may require (``module:<name>``)
MODULES = (NAME, LIVEPATCH)
BUILD_TIMEOUT = 300.0
#: how a Debian kernel's module is built (part of its cache key): host/buildroot.py
BUILDROOT = "debian-buildroot-1"


def is_custom(kernel_id: str) -> bool:
    """A user's build (``custom``) or one made by ``pokelab build-kernel`` (``custom-*``).  Pure."""
    return kernel_id == "custom" or kernel_id.startswith("custom-")


def source_dir(name: str = NAME) -> Path:
    return images_dir() / "modules" / name


def source_hash(files: dict[str, bytes], release: str, how: str = BUILDROOT) -> str:
    """16 hex digits over the release, the way it is built and every source file (name and content).  Pure."""
    h = hashlib.sha256(f"release\0{release}\0how\0{how}\0".encode())
    for name in sorted(files):
        h.update(f"{name}\0{len(files[name])}\0".encode())
        h.update(files[name])
    return h.hexdigest()[:16]


def module_path(cache: Path, release: str, digest: str, name: str = NAME) -> Path:
    """Where the built module for this release and source lives.  Pure."""
    return cache / "modules" / release / digest / f"{name}.ko"


def _source_files(name: str) -> dict[str, bytes]:
    src = source_dir(name)
    return {p.name: p.read_bytes() for p in sorted(src.iterdir())
            if p.is_file() and p.name in (f"{name}.c", "Kbuild")}


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


def _download(cache: Path) -> Callable[[Sequence[str]], list[Path]]:
    """The .deb downloader for the headers (pokelab's own apt sources, into ``<cache>/debs``)."""
    return Apt(cache).debs


def _warnings(stderr: bytes) -> list[str]:
    """The compiler's and modpost's warning lines of a module build.  Pure."""
    return [ln for ln in stderr.decode(errors="replace").splitlines() if "warning:" in ln.lower()]


def _build_debian(kernel: KernelArtifacts, cache: Path, build: Path) -> bytes:
    """Build in ``build`` with the kernel's own suite's compiler (host/buildroot.py); make's stderr."""
    controls, debs = buildroot.fetch_headers(kernel.release, _download(cache))
    plan = buildroot.plan(kernel.release, controls)
    t = time.monotonic()
    root = buildroot.ensure_root(plan, cache)
    unpacked = buildroot.ensure_unpacked(plan, debs, cache)
    log.info("%s build root and headers for %s ready in %.1f s", plan.suite, kernel.release,
             time.monotonic() - t)
    t = time.monotonic()
    stderr = buildroot.build(plan, root, unpacked, build, timeout=BUILD_TIMEOUT)
    log.info("make modules in the %s build root (gcc-%d) took %.1f s", plan.suite, plan.compiler,
             time.monotonic() - t)
    return stderr


def _build_host(kdir: Path, kernel: KernelArtifacts, build: Path, name: str) -> bytes:
    make = procs.which("make", "make")
    return procs.run([make, "-C", str(kdir), f"M={build}", "modules"], timeout=BUILD_TIMEOUT,
                     what=f"building {name}.ko for {kernel.release}").stderr


def ensure_module(kernel: KernelArtifacts, cache: Path, name: str = NAME) -> Path:
    """Path of ``<name>.ko`` (one of MODULES) built for ``kernel`` (once per source, release, build way).

    InfraError if the build fails or warns (a warning here hides an API change: the module
    must build cleanly for every supported kernel); Unsupported for a ``custom`` kernel.
    """
    files = _source_files(name)
    if f"{name}.c" not in files:
        raise InfraError(f"module source {source_dir(name) / (name + '.c')} is missing")
    kdir: Path | None = None
    if is_custom(kernel.id):
        # builds share release strings (patched or not): the build-id tells them apart
        key, how = f"{kernel.release}-{kernel.build_id[:12]}", "host"
        kdir = custom_build_dir(kernel)
    else:
        key, how = kernel.release, BUILDROOT
    out = module_path(cache, key, source_hash(files, key, how), name)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pokelab-kmod-", dir=out.parent) as tmp:
        build = Path(tmp)
        for fname, data in files.items():
            (build / fname).write_bytes(data)
        t = time.monotonic()
        try:
            stderr = _build_host(kdir, kernel, build, name) if kdir else _build_debian(kernel, cache, build)
        except InfraError as exc:
            raise InfraError(f"building {name}.ko for {kernel.release} failed: {exc.title}",
                             exc.tail) from None
        warnings = _warnings(stderr)
        if warnings:
            raise InfraError(f"building {name}.ko for {kernel.release}: {len(warnings)} warning(s)",
                             "\n".join(warnings[-5:]))
        log.info("built %s.ko for %s in %.1f s", name, kernel.release, time.monotonic() - t)
        ko = build / f"{name}.ko"
        if not ko.is_file():
            raise InfraError(f"building {name}.ko for {kernel.release}: make succeeded but no .ko")
        tmp_out = out.with_suffix(".tmp")
        shutil.copyfile(ko, tmp_out)
        tmp_out.rename(out)
    return out
