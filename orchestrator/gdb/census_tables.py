"""The census's kernel tables, read once per build-id from the debug vmlinux and cached.

The thin shell around :func:`census.build_tables`: symbols come from
``symbols.load_symbols`` (``nm``, cached per build-id), table bytes from the
vmlinux's sections (``buildid.read_at_address``), and the result is kept as
JSON under ``<cache>/census/<build-id>.json`` (about 1 MB for a 6.1 cloud kernel;
reading it back takes well under a second, building it a few seconds).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..core.buildid import ParseError, read_at_address
from ..core.census import KernelTables, TableError, build_tables
from .symbols import load_symbols

log = logging.getLogger(__name__)

#: bump when the JSON's meaning changes (old cache files are then rebuilt)
FORMAT = 2
_ALL_TYPES = set("tTwWdDbBrRvV")


def load_tables(vmlinux: Path, system_map: Path | None, cache: Path | None, build_id: str) -> KernelTables:
    """The census tables of this kernel; empty tables (with a warning) if the vmlinux cannot be read."""
    saved = cache / "census" / f"{build_id}.json" if cache is not None and build_id else None
    if saved is not None and saved.is_file():
        try:
            obj = json.loads(saved.read_text())
            if obj.get("format") == FORMAT:
                return KernelTables.from_json(obj)
        except (OSError, ValueError, TableError) as exc:
            log.warning("census cache %s unreadable (%s): rebuilding it", saved, exc)
    rows = load_symbols(system_map, vmlinux, cache, build_id, types=_ALL_TYPES)
    try:
        with open(vmlinux, "rb") as f:
            tables = build_tables(rows, lambda addr, n: read_at_address(f, addr, n))
    except (OSError, ParseError, TableError) as exc:
        log.warning("census: cannot read the kernel's tables from %s: %s", vmlinux, exc)
        return KernelTables()
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "build_id": build_id, **tables.to_json()}))
        tmp.rename(saved)
    return tables
