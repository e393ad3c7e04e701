"""``pokelab repro --runs/--until-fail/--gdb``: the rate arithmetic and argument checks (no guest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.core.verdict import run_rate
from orchestrator.run.probe_run import trap_targets


def test_rate_all_pass() -> None:
    assert run_rate(["PASS", "PASS"]) == {"runs": 2, "failures": 0, "rate": 0.0, "verdict": "PASS"}


def test_rate_counts_fail_and_crash_only() -> None:
    r = run_rate(["PASS", "FAIL", "INFRA", "CRASH"])
    assert (r["runs"], r["failures"], r["rate"], r["verdict"]) == (4, 2, 0.5, "FAIL")


def test_rate_rounds() -> None:
    assert run_rate(["FAIL", "PASS", "PASS"])["rate"] == pytest.approx(0.3333)


def test_rate_stopped_at_first_failure() -> None:
    r = run_rate(["CRASH"])
    assert (r["runs"], r["failures"], r["rate"], r["verdict"]) == (1, 1, 1.0, "CRASH")


def test_rate_no_failure_but_not_all_pass_keeps_the_other_verdict() -> None:
    r = run_rate(["PASS", "INCONCLUSIVE", "INFRA"])
    assert (r["failures"], r["rate"], r["verdict"]) == (0, 0.0, "INCONCLUSIVE")


def test_rate_empty() -> None:
    assert run_rate([]) == {"runs": 0, "failures": 0, "rate": 0.0, "verdict": "INCONCLUSIVE"}


@pytest.mark.parametrize("argv, needle", [
    (["--runs", "0"], "--runs 0: from 1 to 10000"),
    (["--runs", "-3"], "--runs -3: from 1 to 10000"),
    (["--runs", "99999999999"], "--runs 99999999999: from 1 to 10000"),
    (["--until-fail"], "--until-fail needs --runs"),
    (["--repeat", "0", "--runs", "2"], "--repeat 0: from 1 to 100000"),
    (["--repeat", "999999999999"], "--repeat 999999999999: from 1 to 100000"),
])
def test_repro_bad_run_options_are_one_line_exit_2(argv: list[str], needle: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # checked before the scenario name, the kernel or any download
    assert main(["repro", "no-such-scenario", *argv]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pokelab: usage: ") and needle in lines[0], cap.err


def test_repro_run_options_parse() -> None:
    from orchestrator.cli.parser import build_parser

    args = build_parser().parse_args(["repro", "ftrace-function", "--runs", "3", "--until-fail", "--gdb"])
    assert (args.runs, args.until_fail, args.gdb, args.repeat) == (3, True, True, None)


def test_trap_targets_counts_judged_targets(tmp_path: Path) -> None:
    log = tmp_path / "traps.jsonl"
    recs = [{"kind": "judged", "target": "0x1", "target_name": "ftrace_caller"},
            {"kind": "judged", "target": "0x1", "target_name": "ftrace_caller"},
            {"kind": "judged", "target": "0x2"},
            {"kind": "other", "target": "0x3"},
            {"kind": "judged", "target": None}]
    log.write_text("\n".join(json.dumps(r) for r in recs) + "\nnot json\n")
    assert trap_targets(log) == [("ftrace_caller", 2), ("0x2", 1)]
    assert trap_targets(tmp_path / "missing.jsonl") == []
    assert trap_targets(None) == []
