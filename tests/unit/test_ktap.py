"""KTAP v1 rendering of repro and nightly results, on a recorded nightly summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.core import ktap
from orchestrator.core.verdict import BISECT_EXIT_CODES, EXIT_CODES

DATA = Path(__file__).resolve().parent.parent / "data" / "nightly" / "summary.json"
RESULT = re.compile(r"^(ok|not ok) (\d+) ([^#]+?)(?: # (SKIP|TODO|ERROR)(?: (.*))?)?$")


def _results(text: str) -> list[tuple[str, int, str, str | None]]:
    out = []
    for line in text.splitlines():
        m = RESULT.match(line)
        if m:
            out.append((m.group(1), int(m.group(2)), m.group(3), m.group(4)))
    return out


def test_every_verdict_has_a_ktap_result() -> None:
    assert set(EXIT_CODES) - {"USAGE"} == set(ktap.KTAP_RESULT)


def test_nightly_summary_is_ktap_v1_with_one_result_per_planned_cell() -> None:
    summary = json.loads(DATA.read_text())
    text = ktap.from_nightly(summary)
    lines = text.splitlines()
    assert lines[0] == "KTAP version 1"
    assert lines[1] == f"1..{len(summary['planned'])}"
    res = _results(text)
    assert [n for _, n, _, _ in res] == list(range(1, len(summary["planned"]) + 1))
    by_name = {name: (ok, d) for ok, _, name, d in res}
    for r in summary["results"]:
        ok, directive = by_name[f"{r['kernel_id']}:{r['scenario']}"]
        want_ok, want_dir = ktap.KTAP_RESULT["KNOWN_ISSUE" if r.get("known_issue") else r["verdict"]]
        assert (ok == "ok", directive) == (want_ok, want_dir)
    assert lines[-1].startswith("# Totals: pass:")
    assert all(line.startswith(("KTAP", "1..", "ok ", "not ok ", "# ")) for line in lines)


def test_a_cell_that_did_not_run_is_an_error_not_a_pass() -> None:
    summary = {"planned": [["6.1", "ftrace-function"], ["6.12", "ops-one"]],
               "results": [{"kernel_id": "6.1", "scenario": "ftrace-function", "verdict": "PASS"}]}
    res = _results(ktap.from_nightly(summary))
    assert res == [("ok", 1, "6.1:ftrace-function", None), ("not ok", 2, "6.12:ops-one", "ERROR")]


def test_repro_runs_and_reasons() -> None:
    one = {"scenario": "ops-one", "kernel": "k", "verdict": "FAIL", "reasons": ["3 emulation violation(s)"],
           "traps_judged": 9, "violations": 3}
    text = ktap.from_repro(one)
    assert "# FAIL: 3 emulation violation(s)" in text
    assert _results(text) == [("not ok", 1, "ops-one", None)]
    many = {"scenario": "x", "verdict": "FAIL",
            "per_run": [{"verdict": "PASS"}, {"verdict": "UNSUPPORTED", "reasons": ["no #CONFIG_X"]},
                        {"verdict": "INCONCLUSIVE", "reasons": ["0 traps"]}]}
    res = _results(ktap.from_repro(many))
    assert res == [("ok", 1, "x run 1", None), ("ok", 2, "x run 2", "SKIP"),
                   ("not ok", 3, "x run 3", "ERROR")]
    assert "# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:1 error:1" in ktap.from_repro(many)


def test_unknown_verdict_is_refused() -> None:
    with pytest.raises(ValueError):
        ktap.test_line(1, "x", "MAYBE")


def test_bisect_exit_codes_mark_only_kernel_verdicts_good_or_bad() -> None:
    assert BISECT_EXIT_CODES["PASS"] == 0
    assert {v for v, c in BISECT_EXIT_CODES.items() if c == 1} == {"FAIL", "CRASH"}
    assert all(c == 125 for v, c in BISECT_EXIT_CODES.items() if v not in ("PASS", "FAIL", "CRASH"))
