"""The kernel catalog (images/kernels.toml) and what a kernel name asks of the Debian archive.

Pure: no apt here.  A name becomes a :class:`KernelRequest`; the archive
answers it (``orchestrator.kernels.debian.resolve_spec``) with a :class:`KernelSpec`,
the packages of one Debian kernel build.

Names (``--kernel``)::

    6.1, 7.3                    a line: the newest ABI of upstream 6.1 / 7.3 with a -dbg package
    7.3-rt-amd64                the same, another flavour
    6.1.0-57, 7.3.4+deb13       a pinned ABI (cloud-amd64)
    6.1.0-57-rt-amd64           a release (ABI and flavour)
    linux-image-7.3.4+deb13-amd64[-dbg]   a package name
    a catalog id                an entry of images/kernels.toml

Debian's ABIs: ``6.1.0-57`` (bookworm's 6.1 scheme: upstream 6.1, ABI number 57)
and ``6.12.117+deb12`` / ``7.3.4+deb13`` (the scheme since 6.12: the upstream
version and the Debian release it was built for).  Flavours pokelab boots:
``cloud-amd64`` (virtio built in), ``amd64`` (generic, virtio as modules) and
``rt-amd64`` (PREEMPT_RT, modules like ``amd64``).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UsageError
from ..host.cache import images_dir

CATALOG_NAME = "kernels.toml"
FLAVOURS = ("cloud-amd64", "amd64", "rt-amd64")
DEFAULT_FLAVOUR = "cloud-amd64"
PICKS = ("newest", "oldest")
#: the oldest upstream line pokelab's apt sources carry (``images/apt/sources.list``: its oldest
#: suite is bookworm, 6.1): an older line or ABI is refused before any archive is asked
OLDEST_LINE = "6.1"
_KEYS = {"id", "line", "abi", "flavour", "pick", "abi_suffix", "default"}

_FLAVOUR = "|".join(re.escape(f) for f in sorted(FLAVOURS, key=len, reverse=True))
#: 6.1.0-57 (the old scheme: always X.Y.0-N, so a package version such as 6.1.170-3 is
#: none) or 6.12.117+deb12 / 7.3.4+deb13 (the scheme since 6.12)
ABI = r"\d+\.\d+\.(?:0-\d+|\d+\+deb\d+)"
LINE = r"\d+\.\d+"
_PACKAGE = re.compile(rf"^linux-image-(?P<abi>{ABI})-(?P<flavour>{_FLAVOUR})(?:-dbg)?$")
_RELEASE = re.compile(rf"^(?P<abi>{ABI})(?:-(?P<flavour>{_FLAVOUR}))?$")
_LINE = re.compile(rf"^(?P<line>{LINE})(?:-(?P<flavour>{_FLAVOUR}))?$")


def line_of(abi: str) -> str:
    """The upstream line an ABI belongs to: ``6.1.0-57`` -> ``6.1``, ``7.3.4+deb13`` -> ``7.3``."""
    return ".".join(abi.split(".")[:2])


def _line_key(line: str) -> tuple[int, ...]:
    return tuple(int(p) for p in line.split("."))


@dataclass(frozen=True)
class KernelSpec:
    """One Debian kernel build: its image package and its -dbg twin.

    ``version`` is the package's Debian version (``7.3.4-1~bpo13+1``), "" while not known.
    """

    id: str
    release: str
    image_pkg: str
    dbg_pkg: str
    default: bool = False
    version: str = ""

    @classmethod
    def of(cls, kid: str, abi: str, flavour: str, version: str = "", default: bool = False) -> KernelSpec:
        release = f"{abi}-{flavour}"
        return cls(kid, release, f"linux-image-{release}", f"linux-image-{release}-dbg", default, version)


@dataclass(frozen=True)
class KernelRequest:
    """What a kernel name asks for, before the archive answers.

    Exactly one of ``line`` (the ``pick`` = newest/oldest ABI of that upstream line with
    -dbg, chosen when fetched) and ``abi`` (pinned) is set.  ``abi_suffix`` (``+deb12``)
    narrows a line to the ABIs built for one Debian release (6.12 is built for both
    bookworm, ``+deb12``, with gcc-12 and trixie, ``+deb13``, with gcc-14).
    """

    id: str
    flavour: str = DEFAULT_FLAVOUR
    line: str | None = None
    abi: str | None = None
    pick: str = "newest"
    default: bool = False
    abi_suffix: str = ""

    @property
    def pinned(self) -> KernelSpec | None:
        """The spec of a pinned ABI (no archive needed), None for a line."""
        return KernelSpec.of(self.id, self.abi, self.flavour, default=self.default) if self.abi else None

    @property
    def key(self) -> str:
        """What the request means, independent of its id: ``7.3:rt-amd64:newest`` or ``7.3.4+deb13-amd64``."""
        if self.abi:
            return f"{self.abi}-{self.flavour}"
        return f"{self.line}{self.abi_suffix}:{self.flavour}:{self.pick}"

    @property
    def wants(self) -> str:
        """Its meaning in words, for messages."""
        if self.abi:
            return f"{self.abi}-{self.flavour}"
        suffix = f" {self.abi_suffix}" if self.abi_suffix else ""
        return f"the {self.pick} {self.line}{suffix} {self.flavour} kernel with -dbg"


def parse_name(name: str) -> KernelRequest | None:
    """The request a name outside the catalog makes (see the module docstring), None if it is none."""
    for rx in (_PACKAGE, _RELEASE):
        if m := rx.match(name):
            return KernelRequest(name, m.group("flavour") or DEFAULT_FLAVOUR, abi=m.group("abi"))
    if m := _LINE.match(name):
        return KernelRequest(name, m.group("flavour") or DEFAULT_FLAVOUR, line=m.group("line"))
    return None


def _entry(raw: object, index: int, where: Path) -> KernelRequest:
    def bad(why: str) -> UsageError:
        return UsageError(f"bad kernel catalog {where}: entry {index} {why}")

    if not isinstance(raw, dict):
        raise bad("is not a table")
    unknown = set(raw) - _KEYS
    if unknown:
        raise bad(f"has unknown keys {sorted(unknown)}")
    for field in ("id", "line", "abi", "flavour", "pick"):
        value = raw.get(field)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise bad(f"'{field}' is not a non-empty string")
    if not raw.get("id"):
        raise bad("needs a non-empty string 'id'")
    if ("line" in raw) == ("abi" in raw):
        raise bad("needs exactly one of 'line' (6.1) and 'abi' (6.1.0-57)")
    if "line" in raw and not re.fullmatch(LINE, raw["line"]):
        raise bad(f"'line' {raw['line']!r} is not an upstream line such as 6.1")
    if "abi" in raw and not re.fullmatch(ABI, raw["abi"]):
        raise bad(f"'abi' {raw['abi']!r} is not a Debian ABI such as 6.1.0-57 or 7.3.4+deb13")
    flavour = raw.get("flavour", DEFAULT_FLAVOUR)
    if flavour not in FLAVOURS:
        raise bad(f"'flavour' {flavour!r} is not one of {', '.join(FLAVOURS)}")
    pick = raw.get("pick", "newest")
    if pick not in PICKS or ("abi" in raw and "pick" in raw):
        raise bad(f"'pick' is newest or oldest, for a 'line' only (not {pick!r})")
    suffix = raw.get("abi_suffix", "")
    if suffix and ("abi" in raw or not re.fullmatch(r"\+deb\d+", suffix)):
        raise bad(f"'abi_suffix' is +debNN, for a 'line' only (not {suffix!r})")
    default = raw.get("default", False)
    if not isinstance(default, bool):
        raise bad("'default' is not a boolean")
    return KernelRequest(raw["id"], flavour, raw.get("line"), raw.get("abi"), pick, default, suffix)


@dataclass(frozen=True)
class Catalog:
    """Validated kernel entries (requests), looked up by id."""

    kernels: tuple[KernelRequest, ...]

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        """Read and validate ``path`` (default: ``images_dir()/kernels.toml``)."""
        where = path if path is not None else images_dir() / CATALOG_NAME
        try:
            data = tomllib.loads(where.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise UsageError(f"kernel catalog {where} not found") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read kernel catalog {where}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"bad kernel catalog {where}: {exc}") from exc
        raw = data.get("kernel")
        if not isinstance(raw, list) or not raw:
            raise UsageError(f"bad kernel catalog {where}: no [[kernel]] entries")
        catalog = cls(tuple(_entry(item, i, where) for i, item in enumerate(raw)))
        catalog._validate(where)
        return catalog

    def _validate(self, where: Path) -> None:
        names: set[str] = set()
        for req in self.kernels:
            if req.id in names:
                raise UsageError(f"bad kernel catalog {where}: '{req.id}' is used twice")
            names.add(req.id)
        defaults = [k.id for k in self.kernels if k.default]
        if len(defaults) != 1:
            raise UsageError(
                f"bad kernel catalog {where}: need exactly one default, found {len(defaults)}"
            )

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(k.id for k in self.kernels)

    @property
    def default(self) -> KernelRequest:
        return next(k for k in self.kernels if k.default)

    def get(self, name: str) -> KernelRequest:
        """The entry whose id is ``name``; UsageError if there is none."""
        for req in self.kernels:
            if name == req.id:
                return req
        raise UsageError(f"unknown kernel '{name}' (known: {', '.join(self.ids)}; or a line such as 7.3, "
                         "7.3-rt-amd64, an ABI such as 6.1.0-57, or a linux-image package name)")

    def lookup(self, name: str) -> KernelRequest:
        """:meth:`get`, else what the name asks of the archive (:func:`parse_name`).

        UsageError for a line or ABI older than :data:`OLDEST_LINE` (known without the archive);
        whether the archive has any other shows when it is resolved or fetched.
        """
        try:
            return self.get(name)
        except UsageError:
            found = parse_name(name)
            if found is None:
                raise
        line = found.line or line_of(str(found.abi))
        if _line_key(line) < _line_key(OLDEST_LINE):
            raise UsageError(f"no Debian {line} kernel in pokelab's apt sources: they start at {OLDEST_LINE} "
                             "(bookworm); see `pokelab kernels --debian`")
        return found
