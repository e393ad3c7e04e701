"""Kernel artifacts: Debian kernel packages fetched, extracted, indexed and cached.

Layout under ``<cache>``::

    apt/                                pokelab's own apt lists (orchestrator/host/apt.py)
    debs/                               .deb files fetched with ``apt-get download``
    kernels/<release>/.complete         stamp, written last (a dir without it is redone)
    kernels/<release>/meta.json         build-ids, package files used
    kernels/<release>/boot/{vmlinuz,System.map,config}-<release>
    kernels/<release>/lib/modules/<release>/   .ko files as shipped (.ko.xz since 6.12) + modules.dep
    kernels/<release>/vmlinux-<release>        from the -dbg package, with a .gdb_index
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import lzma
import os
import shutil
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core import buildid
from ..core.errors import InfraError, UsageError
from ..host import procs
from ..host.apt import Apt, deb_depends, deb_version
from ..host.cache import file_lock, tree_size
from .catalog import KernelSpec

log = logging.getLogger(__name__)

#: deadline of one host tool run (depmod, gdb-add-index on a 1 GB vmlinux, xz over modules)
TOOL_TIMEOUT_S = 900.0
STAMP = ".complete"
META = "meta.json"


@dataclass(frozen=True)
class KernelArtifacts:
    """Everything a run needs from one kernel build.

    ``system_map``, ``config`` and ``modules_dir`` may be None for a user's own build.
    ``build_id`` is the GNU build-id (hex) shared by ``bzimage`` and ``vmlinux``.
    ``package`` and ``version``: the Debian image package and its version (None for a
    kernel not from Debian's packages).
    """

    id: str
    release: str
    bzimage: Path
    vmlinux: Path
    system_map: Path | None
    config: Path | None
    modules_dir: Path | None
    build_id: str
    package: str | None = None
    version: str | None = None


# --------------------------------------------------------------------------- helpers


def _run(cmd: Sequence[str | os.PathLike[str]], what: str, cwd: Path | None = None,
         timeout: float = TOOL_TIMEOUT_S) -> str:
    """Run a host tool through :func:`procs.run` (deadline ``timeout`` s); its stdout.

    InfraError with the last stderr line if it fails or is not installed.
    """
    res = procs.run([str(c) for c in cmd], timeout=timeout, what=what, cwd=cwd, check=False)
    if res.returncode != 0:
        text = (res.stderr or res.stdout).decode(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        raise InfraError(f"{what} failed: {lines[-1] if lines else f'exit {res.returncode}'}")
    return res.stdout.decode(errors="replace")


@contextmanager
def exclusive_lock(path: Path, what: str, error: type[UsageError] = UsageError) -> Iterator[None]:
    """Like :func:`file_lock`, but fail at once (``error``, naming the holder's pid) if it is held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise error(f"{what} is already running ({holder}; lock {path})") from None
        fh.truncate(0)
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def extract_from_deb(deb: Path, dest: Path, members: Sequence[str]) -> None:
    """``dpkg-deb --fsys-tarfile deb | tar -x --wildcards members`` into ``dest`` (one owned child)."""
    dest.mkdir(parents=True, exist_ok=True)
    script = 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "${@:3}"'
    res = procs.run(["bash", "-o", "pipefail", "-c", script, "extract", str(deb), str(dest), *members],
                    timeout=TOOL_TIMEOUT_S, what=f"extracting {deb.name}", check=False)
    if res.returncode != 0:
        msg = res.stderr.decode(errors="replace").strip().splitlines()
        raise InfraError(f"extracting {deb.name} failed: {msg[-1] if msg else 'tar/dpkg error'}")


# --------------------------------------------------------------------------- build-ids


def decompress_payload(payload: bytes) -> bytes:
    """Decompress a bzImage payload (gzip, xz, lzma, bzip2, zstd, lz4, lzo)."""
    fmt = buildid.detect_compression(payload)
    if fmt == "none":
        return payload
    if fmt == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    body = payload[:-4]  # the build appends the uncompressed size (4 bytes LE)
    if fmt == "xz":
        out = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(body)
    elif fmt == "lzma":
        out = lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(body)
    elif fmt == "bzip2":
        import bz2

        out = bz2.BZ2Decompressor().decompress(body)
    else:
        tool = {
            "zstd": ["zstd", "-d", "-c", "-q"],
            "lz4": ["lz4", "-d", "-c", "-q"],
            "lzo": ["lzop", "-d", "-c", "-q"],
        }[fmt]
        procs.which(tool[0], {"zstd": "zstd", "lz4": "lz4", "lzo": "lzop"}[fmt])
        proc = procs.run(tool, timeout=120, what=f"{tool[0]} -d (bzImage payload)", stdin_data=body,
                         check=False)
        if proc.returncode != 0 and not proc.stdout:
            raise InfraError(f"{tool[0]} could not decompress the bzImage payload")
        out = proc.stdout
    expected = buildid.size_trailer(payload)
    if len(out) != expected:
        raise InfraError(f"bzImage payload ({fmt}) gave {len(out)} bytes, expected {expected}")
    return out


def bzimage_build_id(bzimage: Path) -> tuple[str | None, str, str]:
    """(build-id or None, compression format, release) of a bzImage file."""
    data = bzimage.read_bytes()
    try:
        header = buildid.parse_setup_header(data)
        payload = buildid.payload_bytes(data, header)
        fmt = buildid.detect_compression(payload)
        elf = decompress_payload(payload)
        return buildid.elf_build_id(io.BytesIO(elf)), fmt, header.release
    except buildid.ParseError as exc:
        raise UsageError(f"{bzimage}: {exc}") from exc
    except (lzma.LZMAError, zlib.error, OSError, EOFError) as exc:
        raise UsageError(f"{bzimage}: cannot decompress the kernel payload ({exc})") from exc


def vmlinux_info(vmlinux: Path) -> tuple[str | None, bool]:
    """(build-id or None, has .debug_info) of a vmlinux file."""
    try:
        with open(vmlinux, "rb") as f:
            return buildid.elf_build_id(f), ".debug_info" in buildid.section_names(f)
    except buildid.ParseError as exc:
        raise UsageError(f"{vmlinux}: {exc}") from exc


def artifacts_from_paths(
    bzimage: Path, vmlinux: Path, modules_dir: Path | None = None
) -> KernelArtifacts:
    """Artifacts for a user's own build; checks the vmlinux has DWARF and matches the bzImage."""
    bzimage, vmlinux = Path(bzimage).resolve(), Path(vmlinux).resolve()
    for what, path in (("bzImage", bzimage), ("vmlinux", vmlinux)):
        if not path.is_file():
            raise UsageError(f"{what} {path} does not exist")
    vm_id, has_dwarf = vmlinux_info(vmlinux)
    if not has_dwarf:
        raise UsageError(f"{vmlinux} has no .debug_info (build with CONFIG_DEBUG_INFO)")
    bz_id, _fmt, release = bzimage_build_id(bzimage)
    if vm_id is None or bz_id is None:
        raise UsageError(f"no GNU build-id in {vmlinux if vm_id is None else bzimage}")
    if vm_id != bz_id:
        raise UsageError(
            f"{vmlinux} (build-id {vm_id[:12]}) is not the vmlinux of {bzimage} ({bz_id[:12]})"
        )
    build = vmlinux.parent
    system_map, config = build / "System.map", build / ".config"
    if modules_dir is not None and not Path(modules_dir).is_dir():
        raise UsageError(f"modules dir {modules_dir} does not exist")
    return KernelArtifacts(
        id="custom",
        release=release,
        bzimage=bzimage,
        vmlinux=vmlinux,
        system_map=system_map if system_map.is_file() else None,
        config=config if config.is_file() else None,
        modules_dir=Path(modules_dir).resolve() if modules_dir else None,
        build_id=vm_id,
    )


#: kernels built by ``pokelab build-kernel`` (orchestrator/kernels/kbuild.py): {id: {"dir": ...}}
CUSTOM_REGISTRY = "custom.json"


def custom_registry(cache: Path) -> dict[str, Any]:
    """The kernels built here, ``{id: {"dir", "release", "build_id"}}`` ({} if none or unreadable)."""
    try:
        reg = json.loads((cache / "kernels" / CUSTOM_REGISTRY).read_text())
    except (OSError, ValueError):
        return {}
    return reg if isinstance(reg, dict) else {}


def custom_kernel(kernel_id: str, cache: Path) -> KernelArtifacts:
    """A kernel registered by ``pokelab build-kernel`` (``--kernel custom-<build-id>``)."""
    reg = custom_registry(cache)
    entry = reg.get(kernel_id)
    if not isinstance(entry, dict):
        known = ", ".join(sorted(reg)) or "none: run pokelab build-kernel"
        raise UsageError(f"unknown kernel '{kernel_id}' (built kernels: {known})")
    kdir = Path(entry["dir"])
    arts = artifacts_from_paths(kdir / "bzImage", kdir / "vmlinux")
    return replace(arts, id=kernel_id)


def has_virtio_mmio(kernel: KernelArtifacts) -> bool | None:
    """Whether the kernel has the virtio-mmio driver microvm's devices need (built in or a module):
    from its config, else from a real System.map; None when neither tells."""
    if kernel.config is not None and kernel.config.is_file():
        text = kernel.config.read_text(errors="replace")
        return "\nCONFIG_VIRTIO_MMIO=y" in text or "\nCONFIG_VIRTIO_MMIO=m" in text
    if kernel.system_map is not None and kernel.system_map.is_file() \
            and kernel.system_map.stat().st_size > 4096:  # Debian's is a one-line placeholder
        text = kernel.system_map.read_text(errors="replace")
        return " virtio_mmio_init\n" in text or " virtio_mmio_driver\n" in text
    return None


# --------------------------------------------------------------------------- ensure_kernel


def _version_of(deb_name: str) -> str:
    """The version in a ``<package>_<version>_<arch>.deb`` name, "" if it is not one (older meta.json)."""
    return deb_version(Path(deb_name)) if deb_name.endswith(".deb") and deb_name.count("_") == 2 else ""


def _artifacts(kdir: Path, spec: KernelSpec, meta: dict[str, str]) -> KernelArtifacts:
    rel = spec.release
    return KernelArtifacts(
        id=spec.id,
        release=rel,
        bzimage=kdir / "boot" / f"vmlinuz-{rel}",
        vmlinux=kdir / f"vmlinux-{rel}",
        system_map=kdir / "boot" / f"System.map-{rel}",
        config=kdir / "boot" / f"config-{rel}",
        modules_dir=kdir / "lib" / "modules" / rel,
        build_id=meta["build_id"],
        package=meta.get("image_pkg", spec.image_pkg),
        version=(meta.get("version") or _version_of(meta.get("image_deb", "")) or spec.version
                 or None),
    )


def _lay_out_image(debs: Sequence[Path], staging: Path, rel: str) -> None:
    """Unpack the image packages and put their files where :func:`_artifacts` looks:
    ``boot/{vmlinuz,System.map,config}-<rel>`` and ``lib/modules/<rel>``."""
    root = staging / "pkgroot"
    root.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", deb, root], f"dpkg-deb -x {deb.name}")
    mods = staging / "lib" / "modules" / rel
    mods.parent.mkdir(parents=True)
    (staging / "boot").mkdir()
    for where in (root / "usr" / "lib" / "modules" / rel, root / "lib" / "modules" / rel):
        if where.is_dir() and not where.is_symlink():
            os.replace(where, mods)
            break
    else:
        raise InfraError(f"{debs[0].name} and its parts have no lib/modules/{rel}")
    for name in ("vmlinuz", "System.map", "config"):
        dest = staging / "boot" / f"{name}-{rel}"
        for src in (root / "boot" / f"{name}-{rel}", mods / name):
            if src.is_file():
                os.replace(src, dest)
                break
        else:
            raise InfraError(f"{debs[0].name} and its parts have no {name} for {rel}")
    shutil.rmtree(root)


def ensure_kernel(spec: KernelSpec, cache: Path) -> KernelArtifacts:
    """Fetch, extract, index and cache one catalog kernel; idempotent and fast when cached.

    From the image .deb (since 7.x: its linux-binary/-modules/-base parts): vmlinuz,
    System.map, config and lib/modules/<release> (modules as shipped, ``modules.dep`` made
    with depmod). From the -dbg .deb: only the vmlinux (``/usr/lib/debug/boot/vmlinux-<release>``,
    since 7.x ``/usr/lib/debug/lib/modules/<release>/vmlinux``), then ``gdb-add-index`` once.
    The bzImage's build-id must equal the vmlinux's (InfraError otherwise).

    The small image .deb is kept in ``cache/debs``; its 7.x parts and the 0.3-1.1 GB -dbg .deb
    are deleted once the kernel dir is complete.
    """
    kernels = cache / "kernels"
    kdir = kernels / spec.release
    if (kdir / STAMP).is_file():
        return _artifacts(kdir, spec, json.loads((kdir / META).read_text()))
    with file_lock(kernels / f".{spec.release}.lock"):
        if (kdir / STAMP).is_file():
            return _artifacts(kdir, spec, json.loads((kdir / META).read_text()))
        _build_kernel_dir(spec, cache, kdir)
        return _artifacts(kdir, spec, json.loads((kdir / META).read_text()))


def _build_kernel_dir(spec: KernelSpec, cache: Path, kdir: Path) -> None:
    rel = spec.release
    staging = kdir.parent / f".staging-{rel}"
    for stale in (kdir, staging):
        if stale.exists():
            log.info("removing incomplete %s", stale)
            shutil.rmtree(stale)
    apt = Apt(cache)
    t0 = time.monotonic()
    image_deb = apt.deb(spec.image_pkg)  # first: a package the archive lacks leaves nothing behind
    staging.mkdir(parents=True)
    # Since 7.x Debian splits the image: linux-image-<rel> only depends on linux-binary-<rel>
    # (vmlinuz), linux-modules-<rel> and linux-base-<rel> (System.map, config, modules.*),
    # all under /usr/lib/modules/<rel>.  Older images carry /boot/* and /lib/modules/<rel>.
    parts = [d for d in deb_depends(image_deb) if d.startswith("linux-") and d.endswith(f"-{rel}")]
    debs = [image_deb, *apt.debs(parts)]
    _lay_out_image(debs, staging, rel)
    # modules stay as shipped (.ko.xz since 6.12): the initramfs decompresses the few it takes
    _run(["depmod", "-b", staging, rel], "depmod")
    log.info("%s: image extracted from %s in %.1fs", rel, ", ".join(d.name.split("_")[0] for d in debs),
             time.monotonic() - t0)

    t0 = time.monotonic()
    bz_id, fmt, _ = bzimage_build_id(staging / "boot" / f"vmlinuz-{rel}")
    log.info(
        "%s: bzImage payload is %s, build-id %s (%.1fs)", rel, fmt, bz_id, time.monotonic() - t0
    )

    t0 = time.monotonic()
    dbg_deb = apt.deb(spec.dbg_pkg)
    # 6.1/6.12: the file is ./usr/lib/debug/boot/vmlinux-<rel>; 7.x: that is a symlink to
    # ./usr/lib/debug/lib/modules/<rel>/vmlinux, near the end of a ~1 GB archive (the whole
    # package is read either way).  Take the one regular file among the matches.
    extract_from_deb(dbg_deb, staging / "dbg", ["./usr/lib/debug/*vmlinux*"])
    files = {p.stat().st_ino: p for p in sorted((staging / "dbg").rglob("vmlinux*"))
             if p.is_file() and not p.is_symlink() and p.name in (f"vmlinux-{rel}", "vmlinux")
             and rel in str(p)}  # one per inode: a hard link is the same file
    found = list(files.values())
    if len(found) != 1:
        raise InfraError(f"{spec.dbg_pkg}: expected one vmlinux file under /usr/lib/debug, found "
                         f"{[str(p.relative_to(staging / 'dbg')) for p in found]}")
    vmlinux = staging / f"vmlinux-{rel}"
    os.replace(found[0], vmlinux)
    shutil.rmtree(staging / "dbg")
    log.info("%s: vmlinux extracted in %.1fs", rel, time.monotonic() - t0)

    vm_id, has_dwarf = vmlinux_info(vmlinux)
    if not has_dwarf:
        raise InfraError(f"{spec.dbg_pkg}: vmlinux has no .debug_info")
    if vm_id is None or vm_id != bz_id:
        raise InfraError(
            f"{spec.dbg_pkg}: vmlinux build-id {vm_id} does not match the bzImage's {bz_id}"
        )

    marker = staging / f"vmlinux-{rel}.gdb-index-done"
    if not marker.exists():
        t0 = time.monotonic()
        _run(["gdb-add-index", vmlinux], "gdb-add-index")
        marker.write_text("")
        log.info("%s: gdb-add-index took %.1fs", rel, time.monotonic() - t0)

    meta = {
        "id": spec.id,
        "release": rel,
        "build_id": vm_id,
        "bzimage_compression": fmt,
        "image_pkg": spec.image_pkg,
        "version": deb_version(image_deb),
        "image_deb": image_deb.name,
        "part_debs": [d.name for d in debs[1:]],
        "dbg_deb": dbg_deb.name,
    }
    (staging / META).write_text(json.dumps(meta, indent=1) + "\n")
    (staging / STAMP).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    os.replace(staging, kdir)
    log.info("%s: deleting %s (%d MB)", rel, dbg_deb.name, dbg_deb.stat().st_size >> 20)
    dbg_deb.unlink(missing_ok=True)
    for part in debs[1:]:  # linux-modules-<rel> is ~100 MB; extracted, it is fetched again only if removed
        part.unlink(missing_ok=True)


__all__ = [
    "KernelArtifacts",
    "artifacts_from_paths",
    "bzimage_build_id",
    "decompress_payload",
    "ensure_kernel",
    "extract_from_deb",
    "file_lock",
    "tree_size",
    "vmlinux_info",
]


def remove_kernel(spec: KernelSpec, cache: Path) -> int:
    """Delete a fetched Debian kernel (its dir and its cached .debs); the bytes freed.

    It is fetched again when next asked for.  Taken under the kernel's own lock,
    so a run preparing it at the same moment is not cut short.
    """
    kernels = cache / "kernels"
    kdir = kernels / spec.release
    with file_lock(kernels / f".{spec.release}.lock"):
        freed = tree_size(kdir)
        shutil.rmtree(kdir, ignore_errors=True)
        for pkg in (spec.image_pkg, spec.dbg_pkg):
            for deb in (cache / "debs").glob(f"{pkg}_*.deb"):
                if deb.name.split("_", 1)[0] == pkg:
                    freed += deb.stat().st_size
                    deb.unlink()
    return freed


def is_cached(spec: KernelSpec, cache: Path) -> bool:
    """Whether ``ensure_kernel`` would find this kernel ready, with nothing to fetch."""
    return (cache / "kernels" / spec.release / STAMP).is_file()
