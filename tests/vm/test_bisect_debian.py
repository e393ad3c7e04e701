"""``pokelab bisect --debian``: Debian's prebuilt kernels, fetched and judged for real (no builds).

Between 6.1.0-47 and 6.1.0-56 the archive's kernels pass ``ftrace-function``,
so the honest outcome of a bisect of that range is that its bad endpoint does
not hold: both endpoints booted, probed and judged, then a one-line error.
The culprit-finding walk itself is tested on scripted steps
(tests/unit/test_bisect_driver.py); here everything but the walk is real.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

POKELAB = [sys.executable, "-m", "orchestrator.cli"]
ARGS = ["bisect", "--debian", "6.1.0-47..6.1", "--scenario", "ftrace-function", "--runs", "1"]


def test_both_endpoints_are_judged_on_real_kernels_then_replayed(tmp_path: Path) -> None:
    logf = tmp_path / "bisect.jsonl"
    res = subprocess.run([*POKELAB, *ARGS, "--log", str(logf), "--artifacts", str(tmp_path / "art")],
                         capture_output=True, text=True, timeout=900, check=False)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2, res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last == ("pokelab: usage: the bad endpoint 6.1.0-56-cloud-amd64 came out good: "
                    "1 clean runs, no failure"), res.stderr
    assert "6 Debian kernels with -dbg from 6.1.0-47-cloud-amd64 (6.1.170-3)" in res.stderr
    assert "not judgeable (no -dbg in the archive): 6.1.0-48, 6.1.0-49, 6.1.0-51, 6.1.0-52" in res.stderr
    recs = [json.loads(line) for line in logf.read_text().splitlines()]
    assert [(r["revision"], r["outcomes"], r["decision"]) for r in recs] == [
        ("6.1.0-47-cloud-amd64", ["PASS"], "good"), ("6.1.0-56-cloud-amd64", ["PASS"], "good")]
    for abi in ("6.1.0-47", "6.1.0-56"):
        verdict = json.loads((tmp_path / "art" / abi / "run-1" / "verdict.json").read_text())
        assert verdict["verdict"] == "PASS" and verdict["traps_judged"] > 0, verdict

    again = subprocess.run([*POKELAB, *ARGS, "--replay", str(logf)], capture_output=True, text=True,
                           timeout=120, check=False)
    assert again.returncode == 2 and "[from the log]" in again.stderr, again.stderr
    assert "fetching" not in again.stderr  # nothing run again
    assert len(logf.read_text().splitlines()) == 2
