"""The host's RAM, the most a guest may be given (``--memory``).

Read from ``/proc/meminfo`` (``MemTotal``); a guest asking for more than the host has
would fail in QEMU's allocation (or thrash the host), after the kernel was fetched.
"""

from __future__ import annotations

from pathlib import Path

MEMINFO = Path("/proc/meminfo")
#: the most guest RAM (MiB) when the host's cannot be read: 64 GiB
FALLBACK_MAX_MIB = 65536


def host_memory_mib(meminfo: Path = MEMINFO) -> int:
    """The host's RAM in MiB (``MemTotal``), else :data:`FALLBACK_MAX_MIB` if it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "MemTotal" and value.split()[-1:] == ["kB"]:
                return int(value.split()[0]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return FALLBACK_MAX_MIB
