"""The kernel catalog: which Debian kernel packages pokelab knows (images/kernels.toml)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

CATALOG_NAME = "kernels.toml"
_FIELDS = ("id", "release", "image_pkg", "dbg_pkg")


def images_dir() -> Path:
    """The repo's ``images/`` directory, or env ``POKELAB_IMAGES``."""
    env = os.environ.get("POKELAB_IMAGES")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parent.parent / "images"


@dataclass(frozen=True)
class KernelSpec:
    """One catalog entry: a Debian kernel image package and its -dbg twin."""

    id: str
    release: str
    image_pkg: str
    dbg_pkg: str
    default: bool = False


def _entry(raw: object, index: int, where: Path) -> KernelSpec:
    if not isinstance(raw, dict):
        raise UsageError(f"bad kernel catalog {where}: entry {index} is not a table")
    unknown = set(raw) - set(_FIELDS) - {"default"}
    if unknown:
        raise UsageError(
            f"bad kernel catalog {where}: entry {index} has unknown keys {sorted(unknown)}"
        )
    for field in _FIELDS:
        value = raw.get(field)
        if not isinstance(value, str) or not value.strip():
            raise UsageError(
                f"bad kernel catalog {where}: entry {index} needs a non-empty string '{field}'"
            )
    default = raw.get("default", False)
    if not isinstance(default, bool):
        raise UsageError(f"bad kernel catalog {where}: entry {index} 'default' is not a boolean")
    return KernelSpec(
        id=raw["id"],
        release=raw["release"],
        image_pkg=raw["image_pkg"],
        dbg_pkg=raw["dbg_pkg"],
        default=default,
    )


@dataclass(frozen=True)
class Catalog:
    """Validated kernel entries, looked up by id or by release string."""

    kernels: tuple[KernelSpec, ...]

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
        for spec in self.kernels:
            for name in {spec.id, spec.release}:
                if name in names:
                    raise UsageError(f"bad kernel catalog {where}: '{name}' is used twice")
                names.add(name)
        defaults = [k.id for k in self.kernels if k.default]
        if len(defaults) != 1:
            raise UsageError(
                f"bad kernel catalog {where}: need exactly one default, found {len(defaults)}"
            )

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(k.id for k in self.kernels)

    @property
    def default(self) -> KernelSpec:
        return next(k for k in self.kernels if k.default)

    def get(self, name: str) -> KernelSpec:
        """The entry whose id or release is ``name``; UsageError if there is none."""
        for spec in self.kernels:
            if name in (spec.id, spec.release):
                return spec
        raise UsageError(f"unknown kernel '{name}' (known: {', '.join(self.ids)}, "
                         "or a Debian cloud-amd64 ABI such as 6.1.0-50)")

    def lookup(self, name: str) -> KernelSpec:
        """:meth:`get`, else a Debian package outside the catalog named by ABI or release (6.1.0-50).

        Whether the archive has that kernel shows when its packages are fetched.
        """
        from .debian import spec_for

        try:
            return self.get(name)
        except UsageError:
            found = spec_for(name)
            if found is None:
                raise
            return found
