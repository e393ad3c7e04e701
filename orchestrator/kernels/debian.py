"""Debian's prebuilt kernel packages: the archive's answer to a kernel name, and a bisectable sequence.

Pure core: turn package records (python-debian's deb822, from
``apt-cache show``) into kernels, order them as dpkg does (python-debian's
:func:`~debian.debian_support.version_compare`), pick the kernel a
:class:`~orchestrator.kernels.catalog.KernelRequest` names, pick the range between two
endpoints.  Thin shell: :func:`available` and :func:`resolve_spec` ask
pokelab's own apt (:mod:`orchestrator.host.apt`), never the host's lists.

A kernel is judgeable only when the archive also has its ``-dbg`` package (the
probe needs the DWARF vmlinux).  Debian keeps some ABIs' images without their
``-dbg`` (seen on bookworm: 6.1.0-48, -49, -51, -52): a line id (``6.1``)
never resolves to those, and a bisect reports them as lying in the range but
not judged, because the first bad version found may then not be the first bad one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from debian.debian_support import version_compare

from ..core.errors import InfraError, PokelabError, UsageError
from .catalog import ABI, DEFAULT_FLAVOUR, FLAVOURS, KernelRequest, KernelSpec, line_of

log = logging.getLogger(__name__)

FLAVOUR = DEFAULT_FLAVOUR
#: linux-image-<abi>-<flavour>[-dbg]
_IMAGE_PKG = re.compile(rf"^linux-image-(?P<abi>{ABI})-(?P<flavour>{'|'.join(map(re.escape, FLAVOURS))})"
                        r"(?P<dbg>-dbg)?$")
_UPSTREAM = re.compile(r"^(?:\d+:)?(\d+\.\d+(?:\.\d+)?)")
#: pokelab's record of what each line id resolved to: {request key: {"release", "version", "time"}}
RESOLVED = "resolved.json"


def compare_versions(a: str, b: str) -> int:
    """<0, 0, >0 as ``dpkg --compare-versions a lt/eq/gt b`` (python-debian's implementation)."""
    return version_compare(a, b)


# --------------------------------------------------------------------------- the archive's kernels


@dataclass(frozen=True)
class DebianKernel:
    abi: str  # 6.1.0-47 or 6.12.117+deb12
    flavour: str  # cloud-amd64
    version: str  # the package version, 6.1.170-3
    has_dbg: bool
    suites: tuple[str, ...] = ()  # where the image is: ("trixie-backports",)

    @property
    def line(self) -> str:
        return line_of(self.abi)

    @property
    def release(self) -> str:
        return f"{self.abi}-{self.flavour}"

    @property
    def image_pkg(self) -> str:
        return f"linux-image-{self.release}"

    @property
    def dbg_pkg(self) -> str:
        return f"linux-image-{self.release}-dbg"

    @property
    def upstream(self) -> str:
        """The upstream stable tag this package is based on (v6.1.170)."""
        m = _UPSTREAM.match(self.version)
        return f"v{m.group(1)}" if m else self.version

    @property
    def label(self) -> str:
        return f"{self.release} ({self.version})"

    def spec(self, kid: str | None = None, default: bool = False) -> KernelSpec:
        return KernelSpec.of(kid or self.abi, self.abi, self.flavour, self.version, default)


def parse_show(text: str) -> dict[str, str]:
    """{package: newest version} from ``apt-cache show`` output."""
    from ..host.apt import parse_records

    return newest_versions(parse_records(text))


def newest_versions(records: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """{package: its newest version} over package records."""
    got: dict[str, str] = {}
    for r in records:
        pkg, version = r.get("Package"), r.get("Version")
        if pkg and version and (pkg not in got or compare_versions(version, got[pkg]) > 0):
            got[pkg] = version
    return got


def kernels_from(versions: Mapping[str, str], flavour: str | None = FLAVOUR,
                 suites: Mapping[str, Iterable[str]] | None = None) -> list[DebianKernel]:
    """The versioned kernel images of ``flavour`` (None: every flavour), oldest first, each
    marked with/without its -dbg; ``suites`` maps an image package to the suites that carry it."""
    images: dict[tuple[str, str], str] = {}
    dbgs: set[tuple[str, str]] = set()
    for pkg, version in versions.items():
        m = _IMAGE_PKG.match(pkg)
        if not m or (flavour is not None and m.group("flavour") != flavour):
            continue
        key = (m.group("abi"), m.group("flavour"))
        if m.group("dbg"):
            dbgs.add(key)
        else:
            images[key] = version
    found = [DebianKernel(abi, fl, v, (abi, fl) in dbgs,
                          tuple(sorted((suites or {}).get(f"linux-image-{abi}-{fl}", ()))))
             for (abi, fl), v in images.items()]

    def by_version(a: DebianKernel, b: DebianKernel) -> int:
        return compare_versions(a.version, b.version) or (a.flavour > b.flavour) - (a.flavour < b.flavour)

    return sorted(found, key=cmp_to_key(by_version))


def resolve(request: KernelRequest, kernels: Sequence[DebianKernel]) -> DebianKernel:
    """The kernel ``request`` names among ``kernels`` (oldest first); UsageError if none fits.

    A line takes the newest (or oldest, ``pick``) ABI of that line and flavour that has -dbg;
    a pinned ABI must be there with its -dbg.
    """
    mine = [k for k in kernels if k.flavour == request.flavour]
    if request.abi:
        for k in mine:
            if k.abi == request.abi:
                if not k.has_dbg:
                    raise UsageError(f"{k.image_pkg} has no -dbg package in the archive (pokelab needs "
                                     "its DWARF vmlinux)")
                return k
        raise UsageError(f"no Debian kernel {request.wants} in pokelab's apt sources")
    fits = [k for k in mine if k.line == request.line and k.has_dbg and k.abi.endswith(request.abi_suffix)]
    if not fits:
        lines = sorted({k.line for k in mine if k.has_dbg}, key=lambda s: tuple(map(int, s.split("."))))
        raise UsageError(f"no Debian {request.line} {request.flavour} kernel with -dbg in pokelab's apt "
                         f"sources (lines with -dbg: {', '.join(lines) or 'none'})")
    return fits[-1] if request.pick == "newest" else fits[0]


def parse_range(text: str) -> tuple[str, str]:
    a, sep, b = text.partition("..")
    if not sep or not a.strip() or not b.strip() or ".." in b:
        raise UsageError(f"--debian wants GOOD..BAD (e.g. 6.1-oldest..6.1 or 6.1.0-47..6.1.0-56), "
                         f"not {text!r}")
    return a.strip(), b.strip()


def lookup(kernels: Sequence[DebianKernel], name: str, aliases: Mapping[str, str] | None = None) -> int:
    """Index of the kernel named by its ABI, release, package version or an alias (a release)."""
    name = (aliases or {}).get(name, name)
    for i, k in enumerate(kernels):
        if name in (k.abi, k.release, k.version):
            return i
    known = ", ".join(k.abi for k in kernels if k.has_dbg) or "none"
    flavours = ", ".join(sorted({k.flavour for k in kernels})) or FLAVOUR
    raise UsageError(f"no Debian {flavours} kernel {name!r} in pokelab's apt sources (with -dbg: {known})")


@dataclass(frozen=True)
class DebianRange:
    judged: list[DebianKernel]  # oldest first; judged[0] is the good endpoint, judged[-1] the bad one
    unjudgeable: list[DebianKernel]  # in the range, but no -dbg in the archive

    def between(self, older: DebianKernel, newer: DebianKernel) -> list[DebianKernel]:
        """Unjudgeable kernels that lie strictly between two judged ones."""
        def inside(k: DebianKernel) -> bool:
            return compare_versions(older.version, k.version) < 0 < compare_versions(newer.version, k.version)

        return [k for k in self.unjudgeable if inside(k)]


def select_range(kernels: Sequence[DebianKernel], good: str, bad: str,
                 aliases: Mapping[str, str] | None = None) -> DebianRange:
    gi, bi = lookup(kernels, good, aliases), lookup(kernels, bad, aliases)
    for i, what in ((gi, "good"), (bi, "bad")):
        if not kernels[i].has_dbg:
            raise UsageError(f"the {what} endpoint {kernels[i].release} has no -dbg package in the archive")
    if gi >= bi:
        raise UsageError(f"the good endpoint {kernels[gi].label} is not older than "
                         f"the bad one {kernels[bi].label}")
    span = kernels[gi:bi + 1]
    return DebianRange([k for k in span if k.has_dbg], [k for k in span if not k.has_dbg])


# --------------------------------------------------------------------------- shell


def available(cache: Path, flavour: str | None = FLAVOUR, with_suites: bool = False, *,
              offline: bool = False) -> list[DebianKernel]:
    """Every ``linux-image-<abi>-<flavour>`` in pokelab's apt sources, oldest first (lists updated
    when stale, see :mod:`orchestrator.host.apt`); ``flavour=None``: every flavour pokelab boots.
    ``offline``: the lists as they are, of any age (UsageError if they were never fetched here)."""
    from ..host.apt import Apt

    apt = Apt(cache, max_age_s=float("inf")) if offline else Apt(cache)
    if offline and apt.lists_age_s() is None:
        raise UsageError(f"pokelab's Debian lists were never fetched here from its sources ({apt.lists}): "
                         "`pokelab kernels --debian` fetches them")
    names = [n for n in apt.pkgnames("linux-image-")
             if (m := _IMAGE_PKG.match(n)) and (flavour is None or m.group("flavour") == flavour)]
    if not names:
        raise InfraError(f"pokelab's apt sources list no linux-image-*-{flavour or '*'} package "
                         f"(lists in {apt.lists})")
    suites = apt.suites([n for n in names if not n.endswith("-dbg")]) if with_suites else None
    return kernels_from(newest_versions(apt.records(names)), flavour, suites)


def _load_resolved(cache: Path) -> dict[str, dict[str, object]]:
    try:
        got = json.loads((cache / "kernels" / RESOLVED).read_text())
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def _save_resolved(cache: Path, key: str, spec: KernelSpec) -> None:
    from ..host.cache import file_lock

    path = cache / "kernels" / RESOLVED
    with file_lock(path.with_name(f".{RESOLVED}.lock")):
        got = _load_resolved(cache)
        got[key] = {"release": spec.release, "version": spec.version, "time": time.time()}
        tmp = path.with_name(f".{RESOLVED}.{os.getpid()}")
        tmp.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)


def _remembered_at(request: KernelRequest, cache: Path) -> tuple[KernelSpec, float] | None:
    """What a line resolved to here and how long ago (s), from ``resolved.json``; None if never."""
    entry = _load_resolved(cache).get(request.key)
    if not isinstance(entry, dict) or not isinstance(entry.get("release"), str):
        return None
    try:
        age = time.time() - float(entry.get("time", 0))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        age = float("inf")
    abi = str(entry["release"])[: -len(request.flavour) - 1]
    spec = KernelSpec.of(request.id, abi, request.flavour, str(entry.get("version", "")), request.default)
    return spec, age


def _remembered(request: KernelRequest, cache: Path, max_age_s: float | None) -> KernelSpec | None:
    got = _remembered_at(request, cache)
    if got is None or (max_age_s is not None and not 0 <= got[1] < max_age_s):
        return None
    return got[0]


def resolution(request: KernelRequest, cache: Path) -> tuple[KernelSpec, float | None] | None:
    """What ``request`` names, asking no archive: (its spec, seconds since a line was resolved here;
    None for a pinned ABI), or None for a line never resolved here.  A line older than
    :data:`~orchestrator.host.apt.MAX_AGE_S` is resolved again at its next use."""
    pinned = request.pinned
    return (pinned, None) if pinned is not None else _remembered_at(request, cache)


def resolve_spec(request: KernelRequest, cache: Path, *, offline: bool = False) -> KernelSpec:
    """The Debian kernel a request names now.

    A pinned ABI needs no archive.  A line is answered from ``<cache>/kernels/resolved.json``
    when that answer is younger than the lists' refresh age (:data:`~orchestrator.host.apt.MAX_AGE_S`),
    else from pokelab's apt sources (and remembered); if apt fails, an older answer is used
    with a warning.  ``offline``: only remembered answers, of any age (UsageError if none).
    """
    from ..host.apt import MAX_AGE_S

    pinned = request.pinned
    if pinned is not None:
        return pinned
    fresh = _remembered(request, cache, None if offline else MAX_AGE_S)
    if fresh is not None:
        return fresh
    if offline:
        raise UsageError(f"{request.id}: never resolved here ({request.wants}); run `pokelab images "
                         f"--kernel {request.id}`")
    try:
        k = resolve(request, available(cache, request.flavour))
    except InfraError as exc:
        old = _remembered(request, cache, None)
        if old is None:
            raise
        log.warning("%s: cannot ask the archive (%s); using %s resolved earlier", request.id, exc.title,
                    old.release)
        return old
    spec = k.spec(request.id, request.default)
    try:
        _save_resolved(cache, request.key, spec)
    except OSError as exc:
        log.warning("cannot record the resolution of %s: %s", request.id, exc)
    log.info("kernel %s is %s %s (%s)", request.id, spec.image_pkg, spec.version, request.wants)
    return spec


def resolve_dry(request: KernelRequest, cache: Path) -> KernelSpec | None:
    """What ``request`` names, for a ``--dry-run``: without the network and writing nothing.

    A kernel fetched here, or a line remembered (of any age), as is; otherwise found in pokelab's
    apt lists as they are (not remembered); None when the lists were never fetched here (a pinned
    ABI is then taken as named).  UsageError when the lists are here and lack it, as a run says.
    """
    from .images import is_cached

    pinned = request.pinned
    if pinned is not None and is_cached(pinned, cache):
        return pinned
    if pinned is None and (got := _remembered(request, cache, None)) is not None:
        return got
    try:
        kernels = available(cache, request.flavour, offline=True)
    except UsageError:  # the lists were never fetched here
        return pinned
    return resolve(request, kernels).spec(request.id, request.default)


def cached_spec(request: KernelRequest, cache: Path) -> KernelSpec | None:
    """The kernel ``request`` last resolved to here if it is fetched and prepared, else None.

    Asks no archive (for tests and listings that must not reach the network).
    """
    from .images import is_cached

    try:
        spec = resolve_spec(request, cache, offline=True)
    except UsageError:
        return None
    return spec if is_cached(spec, cache) else None


def remembered(request: KernelRequest, cache: Path) -> bool:
    """A pinned ABI, or a line resolved here before (of any age): no archive asked, nothing written."""
    try:
        resolve_spec(request, cache, offline=True)
    except UsageError:
        return False
    return True


def fetchable(request: KernelRequest, cache: Path) -> bool:
    """The archive can provide this kernel with its -dbg (a line: or answered it before)."""
    try:
        if request.pinned is None:
            resolve_spec(request, cache)
        else:
            resolve(request, available(cache, request.flavour))
    except PokelabError:
        return False
    return True
