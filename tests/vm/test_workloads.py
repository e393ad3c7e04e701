"""A scenario's checks do not depend on the load (issue 12, item 4).

``--workload FILE`` replaces the scenario's load.  static-key-schedstats once read
its evidence from ``/proc/$(pidof loadgen)/sched``: with a user's load there was no
loadgen, the evidence was 0 and the run FAILed ("the tracer/handler recorded
nothing") though thousands of traps were judged with 0 violations.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

POKELAB = [sys.executable, "-m", "orchestrator.cli"]
SHELL_LOOP = Path(__file__).resolve().parents[2] / "scenarios" / "workloads" / "shell-loop.sh"


def test_static_key_schedstats_passes_with_a_users_workload(tmp_path: Path) -> None:
    out = tmp_path / "v.json"
    res = subprocess.run([*POKELAB, "repro", "static-key-schedstats", "--workload", str(SHELL_LOOP),
                          "--artifacts", str(tmp_path / "art"), "--json", str(out)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert "Traceback" not in res.stderr, res.stderr
    v = json.loads(out.read_text())
    assert v["verdict"] == "PASS", (v.get("reasons"), v.get("evidence"), v.get("load"))
    assert res.returncode == 0
    assert v["evidence"]["schedstats-on"] > 0  # counted system-wide, whatever runs
    assert v["floor_traps"] >= 1 and v["violations"] == 0
    assert v["load"]["still_running_at_end"] == len(v["load"]["cpus"]), v["load"]
    assert "loadgen" not in json.dumps(v["load"])
