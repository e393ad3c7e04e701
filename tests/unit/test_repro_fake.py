"""``pokelab repro --runs N [--until-fail]`` (``jobs.repro.run``) on a scripted Execute (fakerun.py).

Each run is a RunRequest in ``artifacts/run-I`` whose verdict.json the fake writes as
``execute`` does; the job writes the one final verdict (rate, per-run list) and stops at a
failure (``--until-fail``) or a signal, never ending PASS after one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakerun import Interrupt, Outcome, ScriptedExecute

from orchestrator.core.errors import Terminated
from orchestrator.jobs import repro
from orchestrator.run.request import KernelChoice, RunRequest, VmOptions
from orchestrator.run.scenarios_table import BY_NAME


def _request(tmp_path: Path) -> RunRequest:
    return RunRequest(BY_NAME["ftrace-function"], tmp_path / "art", kernel=KernelChoice("6.12"),
                      vm=VmOptions(smp=2, memory_mb=512, accel="tcg"), inject="wrong-target")


def _go(tmp_path: Path, script: list[Outcome], **kw: Any) -> tuple[repro.Repro, ScriptedExecute, list[str]]:
    ex = ScriptedExecute(script)
    said: list[str] = []
    rep = repro.run(_request(tmp_path), ex, say=kw.pop("say", said.append), **kw)
    return rep, ex, said


def _final(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "art" / "verdict.json").read_text())  # type: ignore[no-any-return]


def test_runs_each_in_its_dir_and_the_final_verdict_has_the_rate(tmp_path: Path) -> None:
    rep, ex, said = _go(tmp_path, ["PASS", "FAIL", "PASS", "CRASH", "PASS"], runs=5)
    art = tmp_path / "art"
    assert [r.artifacts for r in ex.requests] == [art / f"run-{i}" for i in range(1, 6)]
    base = _request(tmp_path)
    assert all(r.but(artifacts=base.artifacts) == base for r in ex.requests)  # only the dir changes
    for i, v in enumerate(["PASS", "FAIL", "PASS", "CRASH", "PASS"], 1):
        assert json.loads((art / f"run-{i}" / "verdict.json").read_text())["verdict"] == v
    final = _final(tmp_path)
    assert final == rep.final.as_dict() and rep.many and rep.stopped is None
    assert (final["runs"], final["failures"], final["rate"], final["runs_requested"]) == (5, 2, 0.4, 5)
    assert final["verdict"] == "FAIL" and final["reasons"] == ["2 emulation violation(s)"]
    assert [(r["run"], r["verdict"], r["artifacts"]) for r in final["per_run"]] == [
        (i, v, str(art / f"run-{i}")) for i, v in enumerate(["PASS", "FAIL", "PASS", "CRASH", "PASS"], 1)]
    assert final["per_run"][1]["violations"] == 2 and final["per_run"][0]["traps_judged"] == 80
    assert (final["scenario"], final["kernel"], final["kernel_id"]) == (
        "ftrace-function", "6.12-release", "6.12")
    assert final["inject"] == "wrong-target" and final["until_fail"] is False and "interrupted" not in final
    assert said[:2] == ["run 1/5", "run 1/5: PASS in 2.5 s"] and said[-1] == "run 5/5: PASS in 2.5 s"


def test_all_pass(tmp_path: Path) -> None:
    rep, _ex, _ = _go(tmp_path, ["PASS"] * 3, runs=3)
    final = _final(tmp_path)
    assert (final["verdict"], final["runs"], final["failures"], final["rate"]) == ("PASS", 3, 0, 0.0)
    # the first run's reasons
    assert final["reasons"] == ["80 trap(s) judged, 0 violations, 4 site read-backs matched"]
    assert rep.final.verdict == "PASS" and len(rep.runs) == 3


@pytest.mark.parametrize("script, ran, verdict", [
    (["PASS", "PASS", "CRASH", "PASS"], 3, "CRASH"),
    (["FAIL", "PASS", "PASS", "PASS"], 1, "FAIL"),
    # what proves nothing does not stop the runs: only FAIL and CRASH reproduce the bug
    (["INFRA", "BOOT_FAIL", "INCONCLUSIVE", "FAIL"], 4, "FAIL"),
    (["PASS", "INFRA", "PASS", "PASS"], 4, "INFRA")])
def test_until_fail_stops_at_the_first_fail_or_crash(tmp_path: Path, script: list[Outcome], ran: int,
                                                    verdict: str) -> None:
    rep, ex, _ = _go(tmp_path, script, runs=4, until_fail=True)
    assert len(ex.requests) == ran == len(rep.runs)
    final = _final(tmp_path)
    assert final["verdict"] == verdict and final["runs"] == ran and final["runs_requested"] == 4
    assert final["until_fail"] is True and rep.stopped is None
    assert not (tmp_path / "art" / f"run-{ran + 1}").exists()


def test_one_run_is_the_run_s_own_verdict(tmp_path: Path) -> None:
    rep, ex, said = _go(tmp_path, ["FAIL"])
    assert [r.artifacts for r in ex.requests] == [tmp_path / "art"] and said == []
    final = _final(tmp_path)
    assert not rep.many and final["verdict"] == "FAIL" and final["violations"] == 2
    assert (final["runs"], final["failures"], final["rate"]) == (1, 1, 1.0)
    assert "per_run" not in final and "runs_requested" not in final


@pytest.mark.parametrize("before, verdict", [(["PASS"], "INCONCLUSIVE"), (["FAIL"], "FAIL")])
def test_a_run_interrupted_midway(tmp_path: Path, before: list[Outcome], verdict: str) -> None:
    rep, ex, _ = _go(tmp_path, [*before, Interrupt(), "PASS"], runs=3)
    assert len(ex.requests) == 2 and rep.stopped == ("SIGINT", 130)
    cut = json.loads((tmp_path / "art" / "run-2" / "verdict.json").read_text())
    assert cut["interrupted"] is True and rep.runs[1].interrupted
    final = _final(tmp_path)
    assert final["interrupted"] is True and final["verdict"] == verdict and final["runs"] == 2
    assert final["per_run"][1]["interrupted"] is True and "interrupted" not in final["per_run"][0]
    # the reasons of the verdict's first run: the cut one's, or the failure's
    want = ("interrupted by SIGINT after 80 trap(s) judged" if verdict == "INCONCLUSIVE"
            else "2 emulation violation(s)")
    assert final["reasons"][0] == want


def test_the_one_run_interrupted(tmp_path: Path) -> None:
    rep, _ex, _ = _go(tmp_path, [Interrupt(signal_name="SIGTERM", code=143)])
    assert rep.stopped == ("SIGTERM", 143)
    final = _final(tmp_path)
    assert final["verdict"] == "INCONCLUSIVE" and final["interrupted"] is True
    assert final["reasons"] == ["interrupted by SIGTERM after 80 trap(s) judged"]


def test_sigint_between_runs(tmp_path: Path) -> None:
    def say(line: str) -> None:  # the signal arrives as run 3 is announced
        if line == "run 3/3":
            raise KeyboardInterrupt

    rep, ex, _ = _go(tmp_path, ["PASS", "PASS", "PASS"], runs=3, say=say)
    assert len(ex.requests) == 2 and rep.stopped == ("SIGINT", 130)
    final = _final(tmp_path)
    assert final["verdict"] == "INCONCLUSIVE" and final["interrupted"] is True and final["runs"] == 2
    assert final["reasons"][0] == "interrupted by SIGINT after 2 of 3 run(s): nothing proven"


def test_sigterm_before_a_run_started(tmp_path: Path) -> None:
    # raised while the next run was being prepared (before its probed run, so nothing written)
    rep, ex, _ = _go(tmp_path, ["FAIL", Terminated(143)], runs=3)
    assert len(ex.requests) == 2 and rep.stopped == ("SIGTERM", 143)
    assert not (tmp_path / "art" / "run-2" / "verdict.json").exists()
    final = _final(tmp_path)
    assert final["verdict"] == "FAIL" and final["interrupted"] is True and final["runs"] == 1


def test_a_signal_before_any_run_is_never_pass(tmp_path: Path) -> None:
    rep, _ex, _ = _go(tmp_path, [KeyboardInterrupt()], runs=2)
    assert rep.runs == () and rep.stopped == ("SIGINT", 130)
    final = _final(tmp_path)
    assert final["verdict"] == "INCONCLUSIVE" and final["runs"] == 0 and final["kernel_id"] == "6.12"
    assert final["reasons"] == ["interrupted by SIGINT after 0 of 2 run(s): nothing proven"]


def test_report_lines(tmp_path: Path) -> None:
    rep, _ex, _ = _go(tmp_path, ["PASS", "FAIL", "PASS"], runs=3)
    lines = repro.report_lines(rep)
    art = tmp_path / "art"
    assert lines[0] == "ftrace-function on 6.12-release: FAIL  (2 emulation violation(s))"
    assert lines[1] == "runs 3, failures 1, rate 0.33"
    assert lines[2:5] == [f"  {v:12} {art / f'run-{i}'}" for i, v in enumerate(["PASS", "FAIL", "PASS"], 1)]
    assert lines[5] == "run 3: traps judged 80, violations 0"
    assert lines[-2] == f"artifacts: {art / 'run-3'}  (verdict.json)"
    assert lines[-1] == f"summary: {art / 'verdict.json'}"

    one, _ex, _ = _go(tmp_path / "one", ["PASS"])
    lines = repro.report_lines(one)
    assert lines[0] == ("ftrace-function on 6.12-release: PASS  "
                        "(80 trap(s) judged, 0 violations, 4 site read-backs matched)")
    assert lines[1] == "traps judged 80, violations 0"
    assert not any(line.startswith(("runs ", "summary: ")) for line in lines)
