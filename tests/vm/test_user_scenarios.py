"""Users' own scenarios and triggers on the default kernel (issue 12 items 6-8), through the CLI.

* every example scenario file (``scenarios/examples/*.toml``) PASSes under ``pokelab repro FILE``,
  printed as KTAP (``--format ktap``);
* ``--trigger DIR`` runs kselftest-style ``.tc`` files from vCPU 0, one after another, records
  each result (an unmet ``# requires:`` is UNSUPPORTED) and PASSes with traps at ``--function``'s
  site, exiting 0 under ``--bisect-exit-codes``;
* ``--trigger FILE`` runs the example script the same way;
* a trigger that fails (exit 3) after patching is INCONCLUSIVE, 125 under ``--bisect-exit-codes``.

About a minute each on this host (repeat 1).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

POKELAB = [sys.executable, "-m", "orchestrator.cli"]
SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
EXAMPLES = sorted((SCENARIOS / "examples").glob("*.toml"))


def repro(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "v.json"
    res = subprocess.run([*POKELAB, "repro", *args, "--artifacts", str(tmp_path / "art"), "--json", str(out)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert "Traceback" not in res.stderr, res.stderr
    assert out.is_file(), res.stdout + res.stderr
    return res, json.loads(out.read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_scenario_file_passes(tmp_path: Path, path: Path) -> None:
    res, v = repro(tmp_path, str(path), "--repeat", "1", "--format", "ktap")
    assert v["verdict"] == "PASS", (v.get("reasons"), v.get("evidence"), v.get("steps"))
    assert res.returncode == 0
    assert v["floor_traps"] >= v["min_traps"] and v["violations"] == 0
    assert v["evidence"] and all(n > 0 for n in v["evidence"].values()), v["evidence"]
    name = v["scenario"]
    assert name == path.stem
    # stdout is KTAP alone; the human lines went to stderr
    assert res.stdout.splitlines()[:2] == ["KTAP version 1", "1..1"], res.stdout
    assert f"ok 1 {name}" in res.stdout.splitlines()
    assert res.stdout.rstrip().endswith("# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0")
    assert f"{name} on " in res.stderr


def test_trigger_dir_of_tc_files(tmp_path: Path) -> None:
    tc = tmp_path / "tc"
    shutil.copytree(SCENARIOS / "triggers" / "ftrace-tc", tc)
    (tc / "zz-needs-more.tc").write_text("# description: needs a file no kernel has\n"
                                        "# requires: no_such_tracefs_file\nexit_fail\n")
    res, v = repro(tmp_path, "--trigger", str(tc), "--function", "__do_sys_getpid", "--min-judged", "2",
                   "--bisect-exit-codes")
    assert v["verdict"] == "PASS", (v.get("reasons"), v.get("trigger"))
    assert res.returncode == 0
    runs = v["trigger"]["runs"]
    assert len(runs) == 1 and runs[0]["exit"] == 0, runs
    assert [(t["test"], t["result"]) for t in runs[0]["tests"]] == [
        ("function-getpid.tc", "PASS"), ("kprobe-getpid.tc", "PASS"), ("zz-needs-more.tc", "UNSUPPORTED")]
    assert v["floor_traps"] >= 2 and v["violations"] == 0
    assert v["final_site"].startswith("__do_sys_getpid+") and "0f 1f 44 00 00" in v["final_site"], v


def test_trigger_script(tmp_path: Path) -> None:
    res, v = repro(tmp_path, "--trigger", str(SCENARIOS / "triggers" / "kprobe-getpid.sh"),
                   "--function", "__do_sys_getpid")
    assert v["verdict"] == "PASS", (v.get("reasons"), v.get("trigger"))
    assert res.returncode == 0
    run = v["trigger"]["runs"][0]
    assert run["exit"] == 0 and "kprobe hits: " in run["output_tail"], run
    assert "kprobe hits: none" not in run["output_tail"]
    assert v["floor_traps"] >= 1


def test_a_failing_trigger_is_inconclusive(tmp_path: Path) -> None:
    # it patches the site (a kprobe on, off) and then fails: the traps are judged, but what
    # the trigger was written to exercise did not run as written
    script = tmp_path / "fails.sh"
    script.write_text("#!/bin/sh\nT=/sys/kernel/tracing\necho 'p:t/g __do_sys_getpid' >> $T/kprobe_events\n"
                      "echo 1 > $T/events/t/g/enable\nsleep 0.2\necho 0 > $T/events/t/g/enable\n"
                      "echo 'it broke' >&2\nexit 3\n")
    res, v = repro(tmp_path, "--trigger", str(script), "--function", "__do_sys_getpid", "--bisect-exit-codes")
    assert v["verdict"] == "INCONCLUSIVE", v.get("reasons")
    assert res.returncode == 125  # git bisect run: skip this revision
    assert "the trigger fails.sh did not run as written (run 1: exited 3: it broke)" in v["reasons"][0]
    assert v["trigger"]["runs"][0]["exit"] == 3
    assert v["traps_judged"] > 0 and v["violations"] == 0
