"""``pokelab kernels --debian``: what pokelab's own apt lists hold (moved from tests/unit, issue 14).

Needs pokelab's apt lists in the cache (``make images`` fetches them; stale lists are updated,
which needs the network).
"""

from __future__ import annotations

import re
import subprocess
import sys

POKELAB = [sys.executable, "-m", "orchestrator.cli"]


def test_debian_listing_reads_pokelabs_apt() -> None:
    res = subprocess.run([*POKELAB, "kernels", "--debian"], capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stderr
    rows = res.stdout.splitlines()
    row = re.compile(r"^(\d+\.\d+) +(cloud-amd64|amd64|rt-amd64) +(\S+) +\S+, ([a-z,-]+), "
                     r"(with -dbg|no -dbg: not usable)")
    assert rows and all(row.match(r) for r in rows), res.stdout
    found = [m.groups() for m in map(row.match, rows) if m]
    assert {f[1] for f in found} == {"cloud-amd64", "amd64", "rt-amd64"}
    assert any(f[4] == "with -dbg" for f in found)
    assert all(f[2].startswith(f[0] + ".") and f[2].endswith(f[1]) for f in found)
