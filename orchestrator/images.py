"""Kernel artifacts: Debian kernel packages fetched, extracted, indexed and cached.

Layout under ``<cache>``::

    debs/                               .deb files fetched with ``apt-get download``
    kernels/<release>/.complete         stamp, written last (a dir without it is redone)
    kernels/<release>/meta.json         build-ids, package files used
    kernels/<release>/boot/{vmlinuz,System.map,config}-<release>
    kernels/<release>/lib/modules/<release>/   decompressed .ko files + modules.dep
    kernels/<release>/vmlinux-<release>        from the -dbg package, with a .gdb_index
"""

from __future__ import annotations

import fcntl
import functools
import io
import json
import logging
import lzma
import os
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import buildid
from .cache import file_lock
from .errors import InfraError, UsageError
from .kernels import KernelSpec

log = logging.getLogger(__name__)

STAMP = ".complete"
META = "meta.json"
_KO_COMPRESSED = {
    ".xz": ["xz", "-d", "-q", "-f"],
    ".zst": ["zstd", "-d", "-q", "-f", "--rm"],
    ".gz": ["gzip", "-d", "-q", "-f"],
}


@dataclass(frozen=True)
class KernelArtifacts:
    """Everything a run needs from one kernel build.

    ``system_map``, ``config`` and ``modules_dir`` may be None for a user's own build.
    ``build_id`` is the GNU build-id (hex) shared by ``bzimage`` and ``vmlinux``.
    """

    id: str
    release: str
    bzimage: Path
    vmlinux: Path
    system_map: Path | None
    config: Path | None
    modules_dir: Path | None
    build_id: str


# --------------------------------------------------------------------------- helpers


def _run(cmd: Sequence[str | os.PathLike[str]], what: str, cwd: Path | None = None) -> str:
    """Run a command; InfraError with the last stderr line if it fails."""
    try:
        proc = subprocess.run(
            [str(c) for c in cmd], capture_output=True, text=True, check=False, cwd=cwd
        )
    except FileNotFoundError as exc:
        raise InfraError(f"{what}: '{cmd[0]}' is not installed") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise InfraError(f"{what} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return proc.stdout


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


def _deb_package(path: Path) -> str:
    return path.name.split("_", 1)[0]


def _dpkg_newer_first(a: Path, b: Path) -> int:
    va, vb = (p.name.split("_")[1].replace("%3a", ":") for p in (a, b))
    if va == vb:
        return 0
    gt = subprocess.run(["dpkg", "--compare-versions", va, "gt", vb], check=False).returncode
    return -1 if gt == 0 else 1


class Apt:
    """Fetches .deb files into ``debs_dir`` with ``apt-get download``.

    A package already present in ``debs_dir`` is used as is (newest version if several),
    without asking apt: the cache is the pin. ``apt-get update`` runs at most once per
    Apt object, only when a package is not found.
    """

    def __init__(self, debs_dir: Path) -> None:
        self.debs_dir = debs_dir
        self._updated = False

    def cached(self, package: str) -> Path | None:
        found = [p for p in self.debs_dir.glob(f"{package}_*.deb") if _deb_package(p) == package]
        if not found:
            return None
        return min(found, key=functools.cmp_to_key(_dpkg_newer_first))

    def debs(self, packages: Sequence[str]) -> list[Path]:
        """Paths of the .deb files of ``packages``, downloading the missing ones in one go."""
        missing = [p for p in dict.fromkeys(packages) if self.cached(p) is None]
        if missing:
            self._download(missing)
        out = []
        for pkg in packages:
            deb = self.cached(pkg)
            if deb is None:
                raise InfraError(f"apt-get download {pkg} produced no .deb file")
            out.append(deb)
        return out

    def deb(self, package: str) -> Path:
        return self.debs([package])[0]

    def _download(self, packages: list[str]) -> None:
        self.debs_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.debs_dir / f".download-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            t0 = time.monotonic()
            log.info("apt-get download %s", " ".join(packages))
            try:
                _run(["apt-get", "download", *packages], "apt-get download", cwd=tmp)
            except InfraError as exc:
                if self._updated or not _looks_not_found(exc.title):
                    raise
                log.info("package not found; running apt-get update once")
                _run(["apt-get", "update"], "apt-get update")
                self._updated = True
                try:
                    _run(["apt-get", "download", *packages], "apt-get download", cwd=tmp)
                except InfraError as again:
                    if _looks_not_found(again.title):  # the archive does not have it: the user's to fix
                        raise UsageError(f"not in the Debian archive: {again.title}") from None
                    raise
            for deb in tmp.glob("*.deb"):
                os.replace(deb, self.debs_dir / deb.name)
            log.info("downloaded %s in %.1fs", " ".join(packages), time.monotonic() - t0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _looks_not_found(message: str) -> bool:
    keys = ("Unable to locate", "Can't select", "has no installation candidate", "404",
            "Couldn't find any package")
    return any(k in message for k in keys)


def extract_from_deb(deb: Path, dest: Path, members: Sequence[str]) -> None:
    """``dpkg --fsys-tarfile deb | tar -x --wildcards members`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(
        ["dpkg", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as dpkg:
        tar = subprocess.run(
            ["tar", "-x", "-C", str(dest), "--wildcards", *members],
            stdin=dpkg.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        assert dpkg.stdout is not None
        dpkg.stdout.close()
        err = dpkg.stderr.read().decode(errors="replace") if dpkg.stderr else ""
        dpkg_rc = dpkg.wait()
    if dpkg_rc != 0 or tar.returncode != 0:
        msg = (tar.stderr or err).strip().splitlines()
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
        try:
            proc = subprocess.run(tool, input=body, capture_output=True, check=False)
        except FileNotFoundError as exc:
            raise InfraError(f"{fmt}-compressed bzImage needs '{tool[0]}' installed") from exc
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


#: kernels built by ``pokelab build-kernel`` (orchestrator/kbuild.py): {id: {"dir": ...}}
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


# --------------------------------------------------------------------------- ensure_kernel


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
    )


def _decompress_modules(modules_dir: Path) -> int:
    count = 0
    for suffix, tool in _KO_COMPRESSED.items():
        files = [str(p) for p in modules_dir.rglob(f"*.ko{suffix}")]
        for i in range(0, len(files), 400):
            _run([*tool, *files[i : i + 400]], f"decompressing .ko{suffix} modules")
        count += len(files)
    return count


def ensure_kernel(spec: KernelSpec, cache: Path) -> KernelArtifacts:
    """Fetch, extract, index and cache one catalog kernel; idempotent and fast when cached.

    From the image .deb: vmlinuz, System.map, config and lib/modules/<release>
    (modules decompressed, ``modules.dep`` made with depmod). From the -dbg .deb: only
    ``./usr/lib/debug/boot/vmlinux-<release>``, then ``gdb-add-index`` once. The bzImage's
    build-id must equal the vmlinux's (InfraError otherwise).

    The small image .deb is kept in ``cache/debs``; the ~280 MB -dbg .deb is deleted
    once its vmlinux is extracted and the kernel dir is complete.
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
    staging.mkdir(parents=True)
    apt = Apt(cache / "debs")

    t0 = time.monotonic()
    image_deb = apt.deb(spec.image_pkg)
    extract_from_deb(
        image_deb,
        staging,
        [
            f"./boot/vmlinuz-{rel}",
            f"./boot/System.map-{rel}",
            f"./boot/config-{rel}",
            f"./lib/modules/{rel}",
        ],
    )
    n = _decompress_modules(staging / "lib" / "modules" / rel)
    _run(["depmod", "-b", staging, rel], "depmod")
    log.info("%s: image extracted (%d compressed modules) in %.1fs", rel, n, time.monotonic() - t0)

    t0 = time.monotonic()
    bz_id, fmt, _ = bzimage_build_id(staging / "boot" / f"vmlinuz-{rel}")
    log.info(
        "%s: bzImage payload is %s, build-id %s (%.1fs)", rel, fmt, bz_id, time.monotonic() - t0
    )

    t0 = time.monotonic()
    dbg_deb = apt.deb(spec.dbg_pkg)
    extract_from_deb(dbg_deb, staging, [f"./usr/lib/debug/boot/vmlinux-{rel}"])
    vmlinux = staging / f"vmlinux-{rel}"
    os.replace(staging / "usr" / "lib" / "debug" / "boot" / f"vmlinux-{rel}", vmlinux)
    shutil.rmtree(staging / "usr")
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
        "image_deb": image_deb.name,
        "dbg_deb": dbg_deb.name,
    }
    (staging / META).write_text(json.dumps(meta, indent=1) + "\n")
    (staging / STAMP).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    os.replace(staging, kdir)
    log.info("%s: deleting %s (%d MB)", rel, dbg_deb.name, dbg_deb.stat().st_size >> 20)
    dbg_deb.unlink(missing_ok=True)


__all__ = [
    "Apt",
    "KernelArtifacts",
    "artifacts_from_paths",
    "bzimage_build_id",
    "decompress_payload",
    "ensure_kernel",
    "extract_from_deb",
    "file_lock",
    "vmlinux_info",
]


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 if it does not exist)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
    return total


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
                if _deb_package(deb) == pkg:
                    freed += deb.stat().st_size
                    deb.unlink()
    return freed


def is_cached(spec: KernelSpec, cache: Path) -> bool:
    """Whether ``ensure_kernel`` would find this kernel ready, with nothing to fetch."""
    return (cache / "kernels" / spec.release / STAMP).is_file()
