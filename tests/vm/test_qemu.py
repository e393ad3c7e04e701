"""The QEMU pokelab chooses: it does not flush translated code at a debug stop, and verdicts say which it is.

``make test`` runs ``make qemu`` first, so on Debian 12 (QEMU 7.2) the chosen QEMU is the
10.2 build in the cache; these tests fail if a VM command would still run on a flushing QEMU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.host.cache import cache_dir
from orchestrator.machine import qemu_binary

pytestmark = pytest.mark.vm

POKELAB = [sys.executable, "-m", "orchestrator.cli"]


def test_chosen_qemu_does_not_flush_at_a_stop(tmp_path: Path) -> None:
    """A real probe run on the chosen QEMU: QEMU's own TB flush count stays put while it traps."""
    chosen = qemu_binary.select(None, cache_dir())
    assert not chosen.flushes, (
        f"VM commands would run on {chosen.path} (QEMU {chosen.version}), which flushes at every "
        "debug stop: run `pokelab qemu` (make qemu)")
    out = tmp_path / "summary.json"
    art = tmp_path / "art"
    res = subprocess.run([*POKELAB, "probe", "--toggles", "3", "--accel", "tcg", "--artifacts", str(art),
                          "--json", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert "Traceback" not in res.stderr, res.stderr
    s = json.loads(out.read_text())
    assert s["verdict"] == "PASS", s.get("reasons")
    # the verdict names the QEMU it ran on
    verdict = json.loads((art / "verdict.json").read_text())
    assert verdict["qemu"] == str(chosen.path) and verdict["qemu_version"] == chosen.version
    assert (art / "repro.sh").read_text().count(str(chosen.path)) == 1
    # hundreds of breakpoint stops, not one translation-cache flush among them
    assert s["probe_stops"] >= 100, s["probe_stops"]
    assert s["tb_flushes"] == 0 and s["tb_flushes_per_stop"] == 0
    assert "flushes TCG's whole translation cache" not in res.stderr


def test_host_qemu_7_2_is_seen_to_flush(tmp_path: Path) -> None:
    """The measure itself can fail: Debian 12's QEMU 7.2 flushes once per single-step stop."""
    host = Path("/usr/bin/qemu-system-x86_64")
    if not host.is_file():
        pytest.skip("no /usr/bin/qemu-system-x86_64")
    version = qemu_binary.parse_version(subprocess.run([str(host), "--version"], capture_output=True,
                                                      text=True, timeout=20, check=True).stdout)
    if qemu_binary.version_tuple(version) >= qemu_binary.FAST_SINCE:
        pytest.skip(f"the host's QEMU is {version}: nothing old to measure here")
    assert qemu_binary.measure_flushes(host, (), tmp_path) == 1.0


def test_qemu_override_is_used(tmp_path: Path) -> None:
    """``--qemu PATH`` boots on that binary (the host's 7.2 here) and the verdict says so, with a warning."""
    host = Path("/usr/bin/qemu-system-x86_64")
    if not host.is_file():
        pytest.skip("no /usr/bin/qemu-system-x86_64")
    art = tmp_path / "art"
    res = subprocess.run([*POKELAB, "repro", "ftrace-function", "--repeat", "1", "--accel", "tcg",
                          "--qemu", str(host), "--artifacts", str(art)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert "Traceback" not in res.stderr, res.stderr
    verdict = json.loads((art / "verdict.json").read_text())
    assert verdict["verdict"] == "PASS", verdict.get("reasons")
    assert verdict["qemu"] == str(host)
    if qemu_binary.version_tuple(verdict["qemu_version"]) < qemu_binary.FAST_SINCE:
        assert res.stderr.count("flushes TCG's whole translation cache") == 1, res.stderr
