"""Debian's prebuilt kernel packages as an ordered, bisectable sequence (``pokelab bisect --debian A..B``).

Pure core: parse ``apt-cache show`` records, order them the way dpkg does, pick
the range between two endpoints.  Thin shell: :func:`available` asks apt.

A kernel is judgeable only when the archive also has its ``-dbg`` package (the
probe needs the DWARF vmlinux).  Debian keeps some ABIs' images without their
``-dbg`` (seen on bookworm: 6.1.0-48, -49, -51, -52): those are reported as
lying in the range but not judged, because the first bad version found may
then not be the first bad one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cmp_to_key

from . import procs
from .errors import InfraError, UsageError
from .kernels import KernelSpec

FLAVOUR = "cloud-amd64"
APT_UPDATE_TIMEOUT_S = 600.0
#: linux-image-<abi>-<flavour>[-dbg]; abi is 6.1.0-47 (old scheme) or 6.12.117+deb12 (new)
_IMAGE_PKG = re.compile(r"^linux-image-(?P<abi>\d+\.\d+\.\d+(?:-\d+|\+deb\d+))-(?P<flavour>[a-z0-9-]+?)"
                        r"(?P<dbg>-dbg)?$")
_UPSTREAM = re.compile(r"^(?:\d+:)?(\d+\.\d+(?:\.\d+)?)")


# --------------------------------------------------------------------------- dpkg version order


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternating non-digit (``~`` sorts first) and numeric parts."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first_diff = 0
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(v: str) -> tuple[int, str, str]:
    epoch, _, rest = v.partition(":") if ":" in v else ("0", "", v)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0, >0 as ``dpkg --compare-versions a lt/eq/gt b``."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


# --------------------------------------------------------------------------- the archive's kernels


@dataclass(frozen=True)
class DebianKernel:
    abi: str  # 6.1.0-47 or 6.12.117+deb12
    flavour: str  # cloud-amd64
    version: str  # the package version, 6.1.170-3
    has_dbg: bool

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

    def spec(self) -> KernelSpec:
        return KernelSpec(id=self.abi, release=self.release, image_pkg=self.image_pkg, dbg_pkg=self.dbg_pkg)


def parse_show(text: str) -> dict[str, str]:
    """{package: version} from ``apt-cache show`` output (the first record of a package wins)."""
    got: dict[str, str] = {}
    for record in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", record, re.M))
        pkg, version = fields.get("Package"), fields.get("Version")
        if pkg and version and pkg not in got:
            got[pkg] = version
    return got


def kernels_from(versions: Mapping[str, str], flavour: str = FLAVOUR) -> list[DebianKernel]:
    """The flavour's versioned kernel images, oldest first, each marked with/without its -dbg."""
    images: dict[str, str] = {}
    dbgs: set[str] = set()
    for pkg, version in versions.items():
        m = _IMAGE_PKG.match(pkg)
        if not m or m.group("flavour") != flavour:
            continue
        if m.group("dbg"):
            dbgs.add(m.group("abi"))
        else:
            images[m.group("abi")] = version
    found = [DebianKernel(abi, flavour, v, abi in dbgs) for abi, v in images.items()]
    def by_version(a: DebianKernel, b: DebianKernel) -> int:
        return compare_versions(a.version, b.version)

    return sorted(found, key=cmp_to_key(by_version))


_NAME = re.compile(r"^(?P<abi>\d+\.\d+\.\d+(?:-\d+|\+deb\d+))(?:-" + re.escape(FLAVOUR) + r")?$")


def spec_for(name: str) -> KernelSpec | None:
    """A kernel spec for a Debian ABI or release not in the catalog (``--kernel 6.1.0-50``), else None.

    Whether the archive has it shows when its packages are fetched.
    """
    m = _NAME.match(name)
    if not m:
        return None
    abi = m.group("abi")
    return DebianKernel(abi, FLAVOUR, "", True).spec()


def parse_range(text: str) -> tuple[str, str]:
    a, sep, b = text.partition("..")
    if not sep or not a.strip() or not b.strip() or ".." in b:
        raise UsageError(f"--debian wants GOOD..BAD (e.g. 6.1.0-47..6.1.0-56), not {text!r}")
    return a.strip(), b.strip()


def lookup(kernels: Sequence[DebianKernel], name: str, aliases: Mapping[str, str] | None = None) -> int:
    """Index of the kernel named by its ABI, release, package version or a catalog alias."""
    name = (aliases or {}).get(name, name)
    for i, k in enumerate(kernels):
        if name in (k.abi, k.release, k.version):
            return i
    known = ", ".join(k.abi for k in kernels if k.has_dbg) or "none"
    raise UsageError(f"no Debian {FLAVOUR} kernel {name!r} in apt's lists (with -dbg: {known})")


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


def _apt(args: Iterable[str], what: str) -> str:
    res = procs.run(["apt-cache", *args], timeout=120, what=what, check=False)
    return res.stdout.decode(errors="replace")


def available(flavour: str = FLAVOUR) -> list[DebianKernel]:
    """Every ``linux-image-<abi>-<flavour>`` apt knows, oldest first (apt's lists, no download)."""
    procs.which("apt-cache", "apt")

    def names() -> list[str]:
        return [n for n in _apt(["pkgnames", "linux-image-"], "apt-cache pkgnames").split()
                if (m := _IMAGE_PKG.match(n)) and m.group("flavour") == flavour]

    found = names()
    if not found and os.geteuid() == 0:  # a fresh machine may have no package lists yet
        procs.run(["apt-get", "update", "-q"], timeout=APT_UPDATE_TIMEOUT_S, what="apt-get update")
        found = names()
    if not found:
        raise InfraError(f"apt knows no linux-image-*-{flavour} package (apt-get update as root)")
    return kernels_from(parse_show(_apt(["show", "--no-all-versions", *sorted(found)], "apt-cache show")),
                        flavour)


def fetchable(image_pkg: str, dbg_pkg: str) -> bool:
    """apt knows both packages (so ``pokelab images`` can fetch them)."""
    try:
        got = parse_show(_apt(["show", "--no-all-versions", image_pkg, dbg_pkg], "apt-cache show"))
    except InfraError:
        return False
    return image_pkg in got and dbg_pkg in got
