"""``pokelab nightly`` (``jobs.nightly_run``) with a scripted Execute (fakerun.py): the cells' requests,
one cell's error kept as that cell's verdict, the summary, the reports and the exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakerun import Interrupt, Outcome, ScriptedExecute

from orchestrator.core.errors import InfraError, UsageError
from orchestrator.jobs import nightly, nightly_run
from orchestrator.jobs.nightly_run import NightlyRequest, Plan, Reports
from orchestrator.run.request import RunRequest, VmOptions
from orchestrator.run.scenarios_table import BY_NAME

VM = VmOptions(smp=2, memory_mb=768, accel="tcg", tcg_thread="multi")
TABLE = {name: BY_NAME[name] for name in ("ftrace-function", "kprobe-ftrace")}
CELLS = (("6.1", "ftrace-function"), ("6.1", "kprobe-ftrace"), ("6.12", "ftrace-function"),
         ("6.12", "kprobe-ftrace"))


def _req(tmp_path: Path, **kw: object) -> NightlyRequest:
    return NightlyRequest(Reports(tmp_path / "night"), vm=VM, repeat=3, **kw)  # type: ignore[arg-type]


def _by_cell(verdicts: dict[tuple[str, str], Outcome]) -> ScriptedExecute:
    return ScriptedExecute(lambda r: verdicts.get((str(r.kernel.kernel), r.scenario.name), "PASS"))


def test_each_cell_is_a_request_of_the_night(tmp_path: Path) -> None:
    ex = _by_cell({})
    run = nightly_run.cell_runner(_req(tmp_path), TABLE, ex)
    out = run("6.12", "kprobe-ftrace", tmp_path / "cell")
    (req,) = ex.requests
    assert isinstance(req, RunRequest)
    assert (req.kernel.kernel, req.kernel.bzimage, req.scenario.name) == ("6.12", None, "kprobe-ftrace")
    assert req.scenario.repeat == 3 and req.vm == VM and req.artifacts == tmp_path / "cell"
    assert req.inject is None and req.workload is None
    assert out["verdict"] == "PASS" and out["kernel_id"] == "6.12"
    assert json.loads((tmp_path / "cell" / "verdict.json").read_text())["verdict"] == "PASS"
    # without --repeat each scenario keeps its own
    ex2 = _by_cell({})
    nightly_run.cell_runner(NightlyRequest(Reports(tmp_path), vm=VM), TABLE, ex2)("6.1", "ftrace-function",
                                                                                  tmp_path / "c2")
    assert ex2.requests[0].scenario.repeat == BY_NAME["ftrace-function"].repeat


def test_an_error_in_one_cell_is_that_cell_s_verdict(tmp_path: Path) -> None:
    ex = _by_cell({("6.1", "kprobe-ftrace"): UsageError("no Debian kernel 6.1.0-99 in pokelab's apt sources"),
                   ("6.12", "ftrace-function"): InfraError("apt-get download failed")})
    runner = nightly_run.cell_runner(_req(tmp_path), TABLE, ex)
    results = nightly.run_matrix(CELLS, runner, tmp_path / "night")
    assert [(r["kernel_id"], r["scenario"], r["verdict"]) for r in results] == [
        ("6.1", "ftrace-function", "PASS"), ("6.1", "kprobe-ftrace", "USAGE"),
        ("6.12", "ftrace-function", "INFRA"), ("6.12", "kprobe-ftrace", "PASS")]
    assert results[1]["reasons"] == ["no Debian kernel 6.1.0-99 in pokelab's apt sources"]
    assert results[2]["reasons"] == ["apt-get download failed"]
    assert results[0]["artifacts"] == "runs/6.1/ftrace-function" and "verdict.json" in results[0]["files"]
    assert len(ex.requests) == 4
    assert nightly.exit_status({"results": results}) == 2  # the night is not complete


def test_a_crash_in_the_runner_itself_does_not_lose_the_night(tmp_path: Path) -> None:
    ex = _by_cell({("6.1", "ftrace-function"): RuntimeError("a bug")})
    results = nightly.run_matrix(CELLS, nightly_run.cell_runner(_req(tmp_path), TABLE, ex), tmp_path / "n",
                                 jobs=2)
    assert [r["verdict"] for r in results] == ["INFRA", "PASS", "PASS", "PASS"]
    assert results[0]["reasons"] == ["RuntimeError: a bug"]


@pytest.mark.parametrize("verdicts, code", [
    ({}, 0),
    ({("6.12", "kprobe-ftrace"): "UNSUPPORTED"}, 0),
    ({("6.1", "kprobe-ftrace"): "FAIL"}, 1),
    ({("6.1", "kprobe-ftrace"): "BOOT_FAIL"}, 1),
    ({("6.1", "kprobe-ftrace"): "FAIL", ("6.12", "kprobe-ftrace"): "INCONCLUSIVE"}, 2)])
def test_the_night_s_summary_reports_and_exit_status(tmp_path: Path, verdicts: dict[tuple[str, str], Outcome],
                                                     code: int) -> None:
    progress: list[str] = []
    summary = nightly_run.run(_req(tmp_path, jobs=2), Plan(CELLS, TABLE), _by_cell(verdicts), progress.append)
    night = tmp_path / "night"
    assert json.loads((night / "summary.json").read_text()) == summary
    assert {"junit.xml", "index.html"} <= {p.name for p in night.iterdir()}
    assert [[r["kernel_id"], r["scenario"]] for r in summary["results"]] == [list(c) for c in CELLS] == \
        summary["planned"]
    assert [r["verdict"] for r in summary["results"]] == [verdicts.get(c, "PASS") for c in CELLS]
    assert all((night / r["artifacts"] / "verdict.json").is_file() for r in summary["results"])
    lines, status = nightly_run.report_lines(summary, night)
    assert status == code == nightly.exit_status(summary)
    assert lines[-1] == f"reports: {night}/index.html, junit.xml, summary.json; exit status {code}"
    assert progress[0] == f"nightly: 4 cell(s), 2 at a time, into {night.resolve()}"
    assert len(progress) == 5


def test_known_issues_and_the_previous_night(tmp_path: Path) -> None:
    issues = tmp_path / "known.toml"
    issues.write_text('[[issue]]\nid = "KI-1"\nkernel = "6.1"\nscenario = "kprobe-*"\nnote = "flaky"\n')
    previous = tmp_path / "previous.json"
    previous.write_text(json.dumps({"run_id": "yesterday", "results": [
        {"kernel_id": "6.12", "scenario": "ftrace-function", "verdict": "FAIL"},
        {"kernel_id": "6.12", "scenario": "kprobe-ftrace", "verdict": "FAIL"}]}))
    req = NightlyRequest(Reports(tmp_path / "night", previous=previous, known_issues=issues), vm=VM)
    ex = _by_cell({("6.1", "kprobe-ftrace"): "FAIL", ("6.12", "kprobe-ftrace"): "CRASH"})
    summary = nightly_run.run(req, Plan(CELLS, TABLE), ex)
    by = {(r["kernel_id"], r["scenario"]): r for r in summary["results"]}
    assert by["6.1", "kprobe-ftrace"]["known_issue"]["id"] == "KI-1"
    assert by["6.1", "kprobe-ftrace"]["change"] == "new-failure"
    assert by["6.12", "ftrace-function"]["change"] == "fixed"
    assert by["6.12", "kprobe-ftrace"]["change"] == "still-failing"
    assert summary["compared_with"] == "yesterday"
    assert nightly.exit_status(summary) == 1  # the CRASH no known issue explains


def test_an_interrupted_night_reports_what_ran(tmp_path: Path) -> None:
    ex = ScriptedExecute(["PASS", "FAIL", KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        nightly_run.run(_req(tmp_path), Plan(CELLS, TABLE), ex)
    summary = json.loads((tmp_path / "night" / "summary.json").read_text())
    assert [r["verdict"] for r in summary["results"]] == ["PASS", "FAIL", "MISSING", "MISSING"]
    assert nightly.exit_status(summary) == 2


def test_plan_of_named_kernels_needs_nothing_from_the_host(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POKELAB_CACHE", str(tmp_path / "cache"))
    p = nightly_run.plan(_req(tmp_path, kernels="6.1, 6.12", scenarios="ftrace-function,kprobe-ftrace"))
    assert p.cells == CELLS and list(p.table) == list(TABLE)
    one, two = (nightly_run.plan(_req(tmp_path, kernels="6.1,6.12", scenarios="ftrace-function,kprobe-ftrace",
                                      shard=f"{i}/2")) for i in (1, 2))
    assert sorted(one.cells + two.cells) == sorted(CELLS) and len(one.cells) == 2
    for kw, msg in ((dict(kernels="6.1,nope"), "unknown kernel 'nope'"),
                    (dict(kernels="6.1", scenarios="nope"), "unknown scenario 'nope'"),
                    (dict(kernels="6.1", shard="3/2"), "--shard 3/2"),
                    (dict(kernels="6.1", jobs=0), "-j 0: VMs at once, from 1 to 64")):
        with pytest.raises(UsageError, match=msg):
            nightly_run.plan(_req(tmp_path, **kw))


def test_a_cell_interrupted_mid_run_keeps_its_own_verdict(tmp_path: Path) -> None:
    """SIGINT inside a cell: the night stops, but that cell's verdict (a FAIL seen before the signal)
    is in the summary, not MISSING."""
    ex = ScriptedExecute(["PASS", Interrupt("FAIL")])
    with pytest.raises(KeyboardInterrupt):
        nightly_run.run(_req(tmp_path), Plan(CELLS, TABLE), ex)
    summary = json.loads((tmp_path / "night" / "summary.json").read_text())
    assert [r["verdict"] for r in summary["results"]] == ["PASS", "FAIL", "MISSING", "MISSING"]


def test_a_refused_cell_writes_its_verdict(tmp_path: Path) -> None:
    ex = _by_cell({("6.1", "kprobe-ftrace"): UsageError("no Debian kernel 6.1.0-99")})
    nightly_run.cell_runner(_req(tmp_path), TABLE, ex)("6.1", "kprobe-ftrace", tmp_path / "cell")
    written = json.loads((tmp_path / "cell" / "verdict.json").read_text())
    assert written["verdict"] == "USAGE" and written["scenario"] == "kprobe-ftrace"
