"""``pokelab repro --runs``: a reproducibility rate over real runs (slow; about a minute)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

POKELAB = [sys.executable, "-m", "orchestrator.cli"]


def repro(tmp_path: Path, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "v.json"
    res = subprocess.run([*POKELAB, "repro", "ftrace-function", "--artifacts", str(tmp_path / "art"),
                          "--json", str(out), *args], capture_output=True, text=True, timeout=timeout,
                         check=False)
    assert "Traceback" not in res.stderr, res.stderr
    assert out.is_file(), res.stdout + res.stderr
    return res, json.loads(out.read_text())


def test_two_runs_pass_with_their_own_artifact_dirs(tmp_path: Path) -> None:
    res, v = repro(tmp_path, "--runs", "2", "--repeat", "1")
    assert v["verdict"] == "PASS", v.get("reasons")
    assert res.returncode == 0
    assert (v["runs"], v["failures"], v["rate"]) == (2, 0, 0.0)
    assert "runs 2, failures 0, rate 0.00" in res.stdout
    art = tmp_path / "art"
    assert json.loads((art / "verdict.json").read_text())["runs"] == 2
    for i in (1, 2):
        run_dir = art / f"run-{i}"
        for name in ("console.log", "traps.jsonl", "mi.log", "qmp.jsonl", "verdict.json", "repro.sh"):
            assert (run_dir / name).is_file(), f"{run_dir / name} missing"
        assert str(run_dir) in res.stdout
    assert f"artifacts: {art / 'run-2'}" in res.stdout
    # phases as they finish, with a live count of traps judged
    assert "booted " in res.stderr and "probe attached" in res.stderr
    assert "cycle 1/1 in " in res.stderr and "traps judged" in res.stderr


def test_until_fail_stops_at_the_first_failure(tmp_path: Path) -> None:
    res, v = repro(tmp_path, "--inject", "wrong-target", "--runs", "3", "--until-fail", "--repeat", "1")
    assert v["verdict"] == "FAIL", v.get("reasons")
    assert res.returncode == 1
    assert (v["runs"], v["failures"], v["rate"]) == (1, 1, 1.0)
    assert not (tmp_path / "art" / "run-2").exists()
    assert "violation at " in res.stdout
