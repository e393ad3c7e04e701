"""``pokelab kernels``: the catalog, kernels built here, and (``--debian``) what apt has."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

POKELAB = [sys.executable, "-m", "orchestrator.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*POKELAB, "kernels", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_catalog_listing() -> None:
    res = _run()
    assert res.returncode == 0, res.stderr
    assert re.search(r"^6\.1 +6\.1\.0-\d+-cloud-amd64 +default, (cached|not cached)$", res.stdout, re.M)


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="not a Debian machine")
def test_debian_listing_reads_apt() -> None:
    res = _run("--debian")
    assert res.returncode == 0, res.stderr
    rows = res.stdout.splitlines()
    row = re.compile(r"^\S+ +\S+-cloud-amd64 +\S+, (with -dbg|no -dbg: not usable)")
    assert rows and all(row.match(r) for r in rows)
    assert any("with -dbg" in r for r in rows)
