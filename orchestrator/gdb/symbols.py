"""Kernel symbols for naming sites and targets: System.map, plus live regions (trampolines)."""

from __future__ import annotations

import threading
from pathlib import Path

from ..core.decode import TableSymbolizer
from ..host import procs

_TEXT_TYPES = set("tTwW")
_DATA_TYPES = set("dDbBrR")


def parse_system_map(text: str, types: set[str] = _TEXT_TYPES) -> list[tuple[int, int, str]]:
    """(address, size, name) for symbols of ``types`` (default: text); size runs to the next.  Pure."""
    rows: list[tuple[int, str]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in types:
            try:
                rows.append((int(parts[0], 16), parts[2]))
            except ValueError:
                continue
    rows.sort()
    out: list[tuple[int, int, str]] = []
    for i, (addr, name) in enumerate(rows):
        nxt = rows[i + 1][0] if i + 1 < len(rows) else addr + 1
        out.append((addr, max(0, nxt - addr), name))
    return out


def load_symbols(system_map: Path | None, vmlinux: Path, cache: Path | None = None,
                 build_id: str = "", types: set[str] = _TEXT_TYPES) -> list[tuple[int, int, str]]:
    """Text symbols from System.map, or from ``nm -n vmlinux`` when the map is a stub.

    Debian ships a one-line System.map ("The real System.map is in the ... -dbg
    package"), so the nm output is cached per build-id under ``cache/symbols``.
    """
    if system_map is not None and system_map.is_file():
        rows = parse_system_map(system_map.read_text(errors="replace"), types)
        if len(rows) > 1000:
            return rows
    saved = cache / "symbols" / f"{build_id}.map" if cache is not None and build_id else None
    if saved is not None and saved.is_file():
        return parse_system_map(saved.read_text(errors="replace"), types)
    res = procs.run(["nm", "-n", str(vmlinux)], timeout=300, what="nm on vmlinux (binutils)")
    text = res.stdout.decode(errors="replace")
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(saved)
    return parse_system_map(text, types)


class KernelSymbolizer:
    """vmlinux symbols plus named regions learned while the guest runs (thread-safe)."""

    def __init__(self, symbols: list[tuple[int, int, str]],
                 data: list[tuple[int, int, str]] = ()) -> None:  # type: ignore[assignment]
        self._table = TableSymbolizer(symbols)
        #: exact addresses of data objects, e.g. ``global_ops`` (to name an ftrace_ops)
        self.data_at = {addr: name for addr, _, name in data}
        self._regions: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()
        self.by_name = {name: addr for addr, _, name in symbols}

    def add_region(self, name: str, start: int, size: int) -> None:
        """Name ``[start, start + size)`` (bytes of guest text); where regions overlap, the newest names."""
        with self._lock:
            self._regions = [r for r in self._regions if r[1] != start] + [(name, start, size)]

    def __call__(self, addr: int) -> str | None:
        with self._lock:
            regions = list(self._regions)
        for name, start, size in reversed(regions):
            if start <= addr < start + size:
                return f"{name}+{addr - start:#x}"
        return self._table(addr)
