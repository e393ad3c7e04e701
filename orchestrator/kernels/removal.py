"""``pokelab kernels --remove``: what a kernel made in the cache, and what removing it leaves.

A fetched Debian kernel (release ``R``, build-id ``B``) made, under ``<cache>``::

    kernels/R/                               its artifacts (images.remove_kernel, under its lock)
    debs/linux-image-R_*.deb, linux-image-R-dbg_*.deb, linux-headers-R_*.deb
    modules/R/                               our out-of-tree modules built for it (kmod.py)
    buildroots/debs/linux-headers-R_<ver>/   its flavour's headers, unpacked (host/buildroot.py)
    initramfs/initramfs-R-<hash16>.cpio      its initramfs (rootfs.py; .cpio.gz before it was uncompressed)
    symbols/B.map, census/B.json             what the probe read from its vmlinux

A kernel built by ``pokelab build-kernel`` (``custom-<id>``) made ``kernels/custom-<id>/`` (and
its entry in ``kernels/custom.json``), ``modules/R-<B[:12]>/``, its initramfs, symbols and census.
An initramfs is named by release only, and two builds may share one (two ``custom-*`` of 7.3.4):
it goes only when no kept kernel has that release.

Left on purpose (:attr:`Plan.kept`): the build roots (``buildroots/<suite>-<key>/``, one per
Debian suite, shared by every kernel of that suite) and the header trees shared by an ABI's
flavours (``buildroots/debs/linux-headers-*-common_*``, ``linux-kbuild-*``): which kernels need
them is not recorded, and they are rebuilt when next needed if deleted by hand.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UsageError
from ..host.cache import tree_size
from .catalog import Catalog, KernelSpec
from .images import META, STAMP, custom_registry, remove_kernel

_INITRAMFS = re.compile(r"^initramfs-(?P<release>.+)-[0-9a-f]{16}\.cpio(\.gz)?$")


@dataclass(frozen=True)
class Removal:
    """One kernel to remove.

    ``name``: its release (a Debian kernel, ``spec`` set) or its ``custom-<id>``;
    ``paths``: what it made beyond its kernel dir and its cached image/-dbg .debs.
    """

    name: str
    release: str
    paths: tuple[Path, ...]
    spec: KernelSpec | None = None


@dataclass(frozen=True)
class Kept:
    """What removing leaves on purpose: ``what`` (one phrase) and its ``paths``."""

    what: str
    paths: tuple[Path, ...]

    @property
    def size(self) -> int:
        """Bytes under ``paths``."""
        return sum(tree_size(p) for p in self.paths)


@dataclass(frozen=True)
class Plan:
    removals: tuple[Removal, ...]
    kept: tuple[Kept, ...]


def _remove_path(path: Path) -> int:
    """Delete a file or tree; the bytes it held (0 if it was not there)."""
    if path.is_symlink() or path.is_file():
        size = path.lstat().st_size
        path.unlink(missing_ok=True)
        return size
    if path.is_dir():
        size = tree_size(path)
        shutil.rmtree(path, ignore_errors=True)
        return size
    return 0


def _build_id(kdir: Path) -> str | None:
    try:
        meta = json.loads((kdir / META).read_text())
    except (OSError, ValueError):
        return None
    bid = meta.get("build_id") if isinstance(meta, dict) else None
    return bid if isinstance(bid, str) and bid else None


def cached_releases(cache: Path) -> dict[str, str]:
    """{kernel name: release} of every kernel in the cache: complete Debian kernel dirs (named by
    their release) and the ``custom-*`` kernels of ``custom.json``."""
    kernels = cache / "kernels"
    found = {d.name: d.name for d in sorted(kernels.iterdir()) if (d / STAMP).is_file()} \
        if kernels.is_dir() else {}
    for kid, entry in custom_registry(cache).items():
        if isinstance(entry, dict) and isinstance(entry.get("release"), str):
            found[kid] = entry["release"]
    return found


def _made_for(cache: Path, release: str, module_key: str, build_id: str | None,
              debian: bool) -> list[Path]:
    """The paths a kernel made beyond its kernel dir (only those that exist)."""
    paths = [cache / "modules" / module_key]
    if debian:
        # package names hold no "_": linux-headers-R_<version> is this release's own
        paths += sorted((cache / "debs").glob(f"linux-headers-{release}_*.deb"))
        paths += sorted((cache / "buildroots" / "debs").glob(f"linux-headers-{release}_*"))
    if build_id:
        paths += [cache / "symbols" / f"{build_id}.map", cache / "census" / f"{build_id}.json"]
    return [p for p in paths if p.exists() or p.is_symlink()]


def _initramfs(cache: Path, releases: Iterable[str]) -> list[Path]:
    wanted = set(releases)
    folder = cache / "initramfs"
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir())
            if (m := _INITRAMFS.match(p.name)) and m.group("release") in wanted]


def _shared(unpacked: str) -> bool:
    """Whether an unpacked header package (``<package>_<version>``) serves more than one flavour."""
    package = unpacked.split("_", 1)[0]
    return package.endswith("-common") or not package.startswith("linux-headers-")


def _kept(cache: Path) -> tuple[Kept, ...]:
    roots = cache / "buildroots"
    if not roots.is_dir():
        return ()
    kept = [Kept("build roots (one per Debian suite, shared by its kernels; rebuilt when next needed "
                 f"if deleted by hand) in {roots}",
                 tuple(d for d in sorted(roots.iterdir()) if d.is_dir() and d.name != "debs"))]
    kept.append(Kept(f"header trees shared by an ABI's flavours (-common, kbuild) in {roots / 'debs'}",
                     tuple(d for d in sorted((roots / "debs").glob("*")) if d.is_dir() and _shared(d.name))))
    return tuple(k for k in kept if k.paths)


def plan(names: Sequence[str], catalog: Catalog, cache: Path) -> Plan:
    """What ``pokelab kernels --remove NAME...`` deletes and leaves; deletes nothing.

    ``names``: catalog ids or releases of fetched Debian kernels, ``custom-<id>`` of built ones,
    or ``built`` (every built kernel).  UsageError (nothing deleted) for a name never fetched or
    built here.
    """
    from .debian import resolve_spec

    built = custom_registry(cache)
    # name -> (release, its modules/ key, build-id, Debian spec or None)
    chosen: dict[str, tuple[str, str, str | None, KernelSpec | None]] = {}
    for name in dict.fromkeys(names):
        if name == "built" or name.startswith("custom-"):
            if name != "built" and name not in built:
                raise UsageError(f"no kernel '{name}' was built here (see: pokelab kernels)")
            for kid in sorted(built) if name == "built" else [name]:
                entry = built[kid] if isinstance(built[kid], dict) else {}
                release = str(entry.get("release", ""))
                bid = entry.get("build_id") if isinstance(entry.get("build_id"), str) else None
                chosen[kid] = (release, f"{release}-{bid[:12]}" if bid else "", bid, None)
            continue
        request = catalog.lookup(name)  # UsageError for an unknown name
        try:
            spec = resolve_spec(request, cache, offline=True)
        except UsageError:
            raise UsageError(f"kernel '{name}' was never fetched here (see: pokelab kernels)") from None
        chosen[spec.release] = (spec.release, spec.release, _build_id(cache / "kernels" / spec.release), spec)
    staying = {r for n, r in cached_releases(cache).items() if n not in chosen}
    removals = []
    for name, (release, key, bid, debian) in chosen.items():
        paths = _made_for(cache, release, key, bid, debian is not None) if key else []
        if debian is not None and not paths and not (cache / "kernels" / release).exists():
            raise UsageError(f"kernel '{release}' was never fetched here (see: pokelab kernels)")
        removals.append(Removal(name, release, tuple(paths), debian))
    # an initramfs is named by release: it goes with the last removed kernel of a release no kept
    # kernel has
    last = {r.release: i for i, r in enumerate(removals) if r.release and r.release not in staying}
    for release, i in last.items():
        r = removals[i]
        removals[i] = Removal(r.name, r.release, (*r.paths, *_initramfs(cache, [release])), r.spec)
    return Plan(tuple(removals), _kept(cache))


def carry_out(removal: Removal, cache: Path) -> int:
    """Delete one planned kernel and what it made; the bytes freed.  A Debian kernel is fetched
    again when next asked for; a built one must be built again."""
    from .kbuild import unregister

    if removal.spec is not None:
        freed = remove_kernel(removal.spec, cache)
    else:
        freed = tree_size(cache / "kernels" / removal.name)
        unregister([removal.name], cache)
    return freed + sum(_remove_path(p) for p in removal.paths)
