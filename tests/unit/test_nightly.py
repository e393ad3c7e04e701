"""Nightly reports from a recorded real run (tests/data/nightly/summary.json: 2 kernels x
2 scenarios, recorded with `pokelab nightly --kernels 6.1,6.12 --scenarios
ftrace-function,kprobe-ftrace --repeat 1`), shards, merge, KCIDB, the exit table."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main
from orchestrator.core.verdict import EXIT_CODES
from orchestrator.jobs import nightly, nightly_reports

DATA = Path(__file__).resolve().parent.parent / "data" / "nightly"
RECORDED = DATA / "summary.json"


@pytest.fixture
def summary() -> dict[str, Any]:
    return json.loads(RECORDED.read_text())


def with_verdicts(summary: dict[str, Any], *verdicts: str) -> dict[str, Any]:
    s = copy.deepcopy(summary)
    for r, v in zip(s["results"], verdicts, strict=False):
        r["verdict"] = v
    return s


# --------------------------------------------------------------------------- shards

CELLS = nightly.matrix(["6.1", "6.12", "6.1.0-47"], ["a", "b-c", "d", "e", "f", "g", "h", "i"])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 24, 30])
def test_shards_cover_the_matrix_exactly_once(n: int) -> None:
    shards = [nightly.shard(CELLS, i, n) for i in range(1, n + 1)]
    flat = [c for s in shards for c in s]
    assert sorted(flat) == sorted(CELLS)  # each cell once: no loss, no duplicate
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_two_shards_are_deterministic_and_order_free() -> None:
    one, two = nightly.shard(CELLS, 1, 2), nightly.shard(CELLS, 2, 2)
    assert set(one) | set(two) == set(CELLS) and not set(one) & set(two)
    assert nightly.shard(list(reversed(CELLS)), 1, 2) == one
    assert len({k for k, _ in one}) == 3  # mixes kernels


@pytest.mark.parametrize("text, want", [("1/2", (1, 2)), (" 2 / 2 ", (2, 2)), ("1/1", (1, 1))])
def test_parse_shard(text: str, want: tuple[int, int]) -> None:
    assert nightly.parse_shard(text) == want


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "1", "1/2/3", ""])
def test_bad_shard(text: str) -> None:
    with pytest.raises(ValueError):
        nightly.parse_shard(text)


# --------------------------------------------------------------------------- exit status


@pytest.mark.parametrize("verdicts, code", [
    (["PASS", "PASS"], 0),
    (["PASS", "UNSUPPORTED"], 0),
    (["PASS", "FAIL"], 1),
    (["CRASH", "PASS"], 1),
    (["BOOT_FAIL", "UNSUPPORTED"], 1),
    (["INFRA", "PASS"], 2),
    (["INCONCLUSIVE", "PASS"], 2),
    (["FAIL", "INFRA"], 2),
    (["MISSING", "PASS"], 2),
    (["FAIL", "MISSING"], 2),
])
def test_exit_status_table(verdicts: list[str], code: int) -> None:
    s = {"results": [{"kernel_id": "k", "scenario": f"s{i}", "verdict": v} for i, v in enumerate(verdicts)]}
    assert nightly.exit_status(s) == code


def test_every_verdict_has_an_outcome_and_an_exit_code() -> None:
    for v in nightly_reports.OUTCOMES:
        assert EXIT_CODES[nightly.exit_key({"verdict": v})] in (0, 1, 2)
    assert {k for k in EXIT_CODES if k != "USAGE"} >= set(nightly_reports.OUTCOMES) - {"MISSING"}
    assert nightly.exit_status({"results": []}) == 2


def test_known_issue_does_not_fail_the_night(summary: dict[str, Any]) -> None:
    s = with_verdicts(summary, "CRASH")
    s["results"][0]["crashes"] = [{"type": "oops-int3", "title": "Oops: int3 in write_null"}]
    issues = [{"id": "tcg-multi", "verdicts": ["CRASH"], "match": "Oops: int3"}]
    nightly.annotate(s, summary, issues)
    assert s["results"][0]["known_issue"]["id"] == "tcg-multi"
    assert nightly.exit_status(s) == 0
    nightly.annotate(s, summary, [{"id": "other", "match": "soft lockup"}])
    assert s["results"][0]["known_issue"] is None and nightly.exit_status(s) == 1


# --------------------------------------------------------------------------- compare


def test_new_failures_apart_from_old_and_fixed(summary: dict[str, Any]) -> None:
    prev = with_verdicts(summary, "PASS", "FAIL", "FAIL")
    now = with_verdicts(summary, "FAIL", "FAIL", "PASS")
    nightly.annotate(now, prev)
    assert [r["change"] for r in now["results"]][:3] == ["new-failure", "still-failing", "fixed"]
    assert now["compared_with"] == summary["run_id"]
    page = nightly_reports.html_report(now, nightly.exit_status(now))
    assert page.count("NEW FAILURE") == 2  # the matrix cell and its section
    junit = nightly_reports.junit_xml(now)
    assert "change: new-failure" in junit


def test_no_previous_marks_nothing(summary: dict[str, Any]) -> None:
    s = nightly.annotate(with_verdicts(summary, "FAIL"), None)
    assert s["results"][0]["change"] is None


def test_known_issues_file_formats(tmp_path: Path) -> None:
    toml = tmp_path / "k.toml"
    toml.write_text('[[issue]]\nid = "a"\nkernel = "6.*"\nmatch = "Oops"\n')
    js = tmp_path / "k.json"
    js.write_text('{"issues": [{"id": "b", "scenario": "ftrace-*"}]}')
    assert nightly.load_known_issues(toml)[0]["id"] == "a"
    assert nightly.load_known_issues(js)[0]["scenario"] == "ftrace-*"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[issue]]\nnote = "no id"\n')
    with pytest.raises(ValueError):
        nightly.load_known_issues(bad)
    assert nightly.load_known_issues(Path(__file__).parents[2] / "docs/ci/known-issues.toml")


# --------------------------------------------------------------------------- reports


def test_recorded_summary_is_a_real_pass(summary: dict[str, Any]) -> None:
    assert summary["format"] == nightly.FORMAT
    assert len(summary["results"]) == 4
    assert {r["verdict"] for r in summary["results"]} == {"PASS"}
    assert all(r["timeline"] and r["traps_judged"] > 0 for r in summary["results"])
    assert nightly.exit_status(summary) == 0


def test_junit(summary: dict[str, Any]) -> None:
    s = with_verdicts(summary, "PASS", "CRASH", "UNSUPPORTED", "INFRA")
    root = ET.fromstring(nightly_reports.junit_xml(s).split("\n", 1)[1])
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == 4
    assert (root.get("tests"), root.get("failures"), root.get("skipped"), root.get("errors")) == \
        ("4", "1", "1", "1")
    kinds = [[child.tag for child in c if child.tag != "system-out"] for c in cases]
    assert kinds == [[], ["failure"], ["skipped"], ["error"]]
    assert {s.get("name") for s in root.findall("testsuite")} == {
        f"pokelab.{r['kernel_id']}" for r in summary["results"]}


def test_html(summary: dict[str, Any]) -> None:
    page = nightly_reports.html_report(summary, nightly.exit_status(summary))
    for r in summary["results"]:
        assert f'id="{r["kernel_id"]}--{r["scenario"]}"' in page
        for f in r["files"]:
            assert f'href="{r["artifacts"]}/{f}"' in page
    assert page.count("<svg") == 4 and page.count("<path") >= 4
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<script" not in page


def test_html_escapes_and_shows_crash_titles(summary: dict[str, Any]) -> None:
    s = with_verdicts(summary, "CRASH")
    s["results"][0]["crashes"] = [{"type": "bug", "title": "BUG: <evil> & co"}]
    page = nightly_reports.html_report(s, nightly.exit_status(s))
    assert "BUG: &lt;evil&gt; &amp; co" in page and "<evil>" not in page


def test_kcidb(summary: dict[str, Any]) -> None:
    s = with_verdicts(summary, "PASS", "CRASH", "UNSUPPORTED", "MISSING")
    data = nightly_reports.kcidb(s)
    assert data["version"]["major"] == 4
    assert [t["status"] for t in data["tests"]] == ["PASS", "FAIL", "SKIP", "MISS"]
    objs = data["checkouts"] + data["builds"] + data["tests"]
    assert all(o["origin"] == "pokelab" and o["id"].startswith("pokelab:") for o in objs)
    assert len({o["id"] for o in objs}) == len(objs)
    builds = {b["id"] for b in data["builds"]}
    assert len(builds) == 2 and all(t["build_id"] in builds for t in data["tests"])
    assert all(b["checkout_id"] == data["checkouts"][0]["id"] for b in data["builds"])
    assert all(t["path"].startswith("pokelab.") and " " not in t["path"] for t in data["tests"])
    assert "output_files" not in data["tests"][0] and data["tests"][0]["misc"]["artifact_files"]
    urls = nightly_reports.kcidb(s, "https://ci.example.org/night/42/")["tests"][0]["output_files"]
    assert urls[0]["url"] == f"https://ci.example.org/night/42/{s['results'][0]['artifacts']}/console.log"


def test_missing_cells_are_reported(summary: dict[str, Any]) -> None:
    planned = [("6.1", "ftrace-function"), ("6.1", "never-ran")]
    s = nightly.new_summary(planned, summary["results"][:1], shard_spec="1/2", started="2026-01-01T00:00:00")
    assert [r["verdict"] for r in s["results"]] == ["PASS", "MISSING"]
    assert nightly.exit_status(s) == 2


# --------------------------------------------------------------------------- merge


def split(summary: dict[str, Any], tmp_path: Path) -> list[Path]:
    """The recorded summary as two shard summaries in their own dirs."""
    paths = []
    for i in (1, 2):
        cells = nightly.shard([(r["kernel_id"], r["scenario"]) for r in summary["results"]], i, 2)
        part = copy.deepcopy(summary)
        part["shard"] = f"{i}/2"
        part["planned"] = [list(c) for c in cells]
        part["results"] = [r for r in part["results"] if (r["kernel_id"], r["scenario"]) in cells]
        d = tmp_path / f"shard-{i}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(part))
        paths.append(d / "summary.json")
    return paths


def test_merge_joins_shards(summary: dict[str, Any], tmp_path: Path) -> None:
    paths = split(summary, tmp_path)
    out = tmp_path / "merged"
    merged = nightly.merge([(json.loads(p.read_text()), p.parent) for p in paths], out)
    key = lambda r: (r["kernel_id"], r["scenario"])  # noqa: E731
    assert sorted(map(key, merged["results"])) == sorted(map(key, summary["results"]))
    assert sorted(merged["merged_from"]) == ["1/2", "2/2"]
    for r in merged["results"]:
        assert r["artifacts"].startswith("../shard-")
    with pytest.raises(ValueError, match="two summaries"):
        nightly.merge([(json.loads(paths[0].read_text()), paths[0].parent)] * 2, out)


def test_merge_cli(summary: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = split(summary, tmp_path)
    out = tmp_path / "merged"
    rc = main(["merge", str(out), *map(str, paths), "--kcidb", str(tmp_path / "k.json")])
    assert rc == 0
    root = ET.parse(out / "junit.xml").getroot()
    assert len(root.findall("./testsuite/testcase")) == 4
    page = (out / "index.html").read_text()
    assert all(f'id="{r["kernel_id"]}--{r["scenario"]}"' in page for r in summary["results"])
    assert len(json.loads((tmp_path / "k.json").read_text())["tests"]) == 4
    assert "exit status 0" in capsys.readouterr().out


def test_merge_of_a_failing_shard_exits_1(summary: dict[str, Any], tmp_path: Path) -> None:
    paths = split(with_verdicts(summary, "FAIL"), tmp_path)
    assert main(["merge", str(tmp_path / "m"), *map(str, paths)]) == 1


def test_nightly_dry_run_shards(capsys: pytest.CaptureFixture[str]) -> None:
    got = []
    for i in (1, 2):
        assert main(["nightly", "--kernels", "6.1,6.12", "--scenarios", "ftrace-function,kprobe-ftrace",
                     "--shard", f"{i}/2", "--dry-run"]) == 0
        got.append(capsys.readouterr().out.split("\n"))
    cells = [tuple(line.split()) for part in got for line in part if line]
    want = [(k, s) for k in ("6.1", "6.12") for s in ("ftrace-function", "kprobe-ftrace")]
    assert sorted(cells) == sorted(want)


def test_nightly_takes_kernel_ids_as_kernel_does(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["nightly", "--out", str(tmp_path), "--dry-run", "--kernels", "6.1,6.1.0-50",
                 "--scenarios", "ftrace-function"]) == 0
    cells = [tuple(line.split()) for line in capsys.readouterr().out.splitlines() if line]
    assert cells == [("6.1", "ftrace-function"), ("6.1.0-50", "ftrace-function")]


@pytest.mark.parametrize("args, needle", [
    (["--shard", "3/2"], "--shard"),
    (["--kernels", "9.9.x"], "unknown kernel"),
    (["--kernels", "6.1,custom-0000deadbeef"], "unknown kernel 'custom-0000deadbeef'"),
    (["--scenarios", "nope"], "unknown scenario"),
    (["-j", "0"], "-j"),
    (["--known-issues", "/nonexistent.toml"], "--known-issues"),
])
def test_nightly_bad_input(args: list[str], needle: str, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["nightly", "--out", str(tmp_path), "--dry-run", *args])
    except SystemExit as exc:  # a bad path is refused while the command line is parsed
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith("pokelab: usage") and err.count("\n") == 1


def test_run_matrix_parallel_keeps_order_and_survives_a_broken_cell(tmp_path: Path) -> None:
    import threading
    import time

    running, peak = [0], [0]
    lock = threading.Lock()

    def runner(kernel: str, scenario: str, artifacts: Path) -> dict[str, Any]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if scenario == "boom":
            raise RuntimeError("bug in a cell")
        (artifacts / "traps.jsonl").write_text('{"t": 1.5, "site": "0x1", "symbol": "f+0x0"}\n'
                                               '{"t": 2.0, "site": "0x1", "symbol": "f+0x0"}\n')
        return {"verdict": "PASS", "reasons": ["ok"], "traps_judged": 2}

    cells = nightly.matrix(["k1", "k2"], ["a", "boom", "c"])
    sink: list[dict[str, Any]] = []
    res = nightly.run_matrix(cells, runner, tmp_path, jobs=3, results=sink)
    assert [(r["kernel_id"], r["scenario"]) for r in res] == cells
    assert len(sink) == 6 and peak[0] > 1
    assert [r["verdict"] for r in res] == ["PASS", "INFRA", "PASS"] * 2
    assert res[0]["timeline"] == [
        {"site": "0x1", "name": "f+0x0", "traps": 2, "points": [[1.5, 1], [2.0, 2]]}]
    assert res[0]["artifacts"] == "runs/k1/a" and res[0]["files"] == ["traps.jsonl"]


def test_merge_cli_with_previous_and_known_issues(summary: dict[str, Any], tmp_path: Path) -> None:
    now = with_verdicts(summary, "CRASH", "FAIL")
    now["results"][0]["crashes"] = [{"type": "oops-int3", "title": "Oops: int3 in write_null"}]
    paths = split(now, tmp_path)
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps(summary))
    known = tmp_path / "known.toml"
    known.write_text('[[issue]]\nid = "tcg"\nmatch = "Oops: int3"\n')
    out = tmp_path / "m"
    assert main(["merge", str(out), *map(str, paths), "--previous", str(prev),
                 "--known-issues", str(known)]) == 1
    merged = json.loads((out / "summary.json").read_text())
    by = {(r["kernel_id"], r["scenario"]): r for r in merged["results"]}
    first, second = (by[(r["kernel_id"], r["scenario"])] for r in summary["results"][:2])
    assert first["known_issue"]["id"] == "tcg"
    assert second["change"] == "new-failure" and second["known_issue"] is None


# --------------------------------------------------------------------------- census


def test_users_chart_and_totals(summary: dict[str, Any]) -> None:
    s = copy.deepcopy(summary)
    s["results"][0]["users"] = {"jump_label": 14, "ftrace": 33}
    s["results"][0]["batch_users"] = {"static_call": 28, "ftrace": 21}
    s["results"][1]["users"] = {"static_call": 107, "bad": "x"}
    assert nightly_reports.users_total(s["results"]) == {"ftrace": 33, "static_call": 107, "jump_label": 14}
    svg = nightly_reports.users_chart(nightly_reports.users_total(s["results"]))
    assert svg.startswith("<svg") and svg.count("<rect") == 3 and ">107</text>" in svg
    page = nightly_reports.html_report(s, nightly.exit_status(s))
    assert "Traps by text_poke user" in page and "ftrace: 33, jump_label: 14" in page
    assert "batches ftrace: 21, static_call: 28" in page
    assert "no census" in nightly_reports.users_chart({})


def test_result_record_keeps_the_census(tmp_path: Path) -> None:
    out = {"verdict": "PASS", "users": {"static_call": 7}, "batch_users": {}, "kernel_id": "6.1"}
    rec = nightly.result_record(out, tmp_path, tmp_path, 1.0)
    assert rec["users"] == {"static_call": 7} and rec["batch_users"] == {}


def test_html_template_escapes_every_field(summary: dict[str, Any]) -> None:
    """The page comes from a Jinja2 template with autoescape on: no summary field can add markup."""
    s = with_verdicts(summary, "FAIL")
    r = s["results"][0]
    r["known_issue"] = {"id": "<b>id</b>", "note": 'say "<x>"', "url": 'https://e.org/?a=1&b="2"'}
    r["reasons"] = ["<script>alert(1)</script>"]
    r["users"] = {"<u>": 1}
    s["run_id"] = "<i>run</i>"
    page = nightly_reports.html_report(s, nightly.exit_status(s))
    assert "<script" not in page and "<b>id" not in page and "<i>run" not in page and "<u>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "known issue &lt;b&gt;id&lt;/b&gt;" in page
    assert 'title="say &#34;&lt;x&gt;&#34;"' in page and 'href="https://e.org/?a=1&amp;b=&#34;2&#34;"' in page
