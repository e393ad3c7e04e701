"""The bisect driver on a tiny real git history (no kernel): the step is injected."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from orchestrator.bisect import BisectError, read_log, run_bisect
from orchestrator.bisect_logic import BUILD_FAIL, FAIL, INFRA, PASS, Decision


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, list[str]]:
    """8 commits of a text file; from commit 5 on (index 5) the file says 'bug'."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "t@example.org")
    _git(repo, "config", "user.name", "t")
    shas = []
    for i in range(8):
        (repo / "f.txt").write_text(f"rev {i}\n" + ("bug\n" if i >= 5 else "ok\n"))
        _git(repo, "add", "f.txt")
        _git(repo, "commit", "-q", "-m", f"commit {i}")
        shas.append(_git(repo, "rev-parse", "HEAD"))
    return repo, shas


def _buggy(wt: Path) -> bool:
    return "bug" in (wt / "f.txt").read_text()


def _run(repo: Path, shas: list[str], step, tmp_path: Path, **kw):  # type: ignore[no-untyped-def]
    return run_bisect(repo, shas[0], shas[-1], step, work=tmp_path / "work",
                      log_path=kw.pop("log_path", tmp_path / "bisect.jsonl"), **kw)


def test_clean_history_finds_the_culprit(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, shas = history
    seen: list[str] = []

    def step(sha: str, wt: Path) -> list[str]:
        seen.append(sha)
        assert _git(wt, "rev-parse", "HEAD") == sha  # the step sees the revision it judges
        return [FAIL] * 3 if _buggy(wt) else [PASS] * 3

    res = _run(repo, shas, step, tmp_path)
    assert res.culprit == shas[5]
    assert res.confidence == pytest.approx(1.0)
    assert seen[:2] == [shas[0], shas[-1]]  # the endpoints first
    assert len(seen) <= 2 + 3  # log2(7) steps
    # the user's checkout is untouched and the scratch worktree is gone
    assert _git(repo, "rev-parse", "HEAD") == shas[-1]
    assert _git(repo, "status", "--porcelain") == ""
    assert len(_git(repo, "worktree", "list").splitlines()) == 1
    assert not (repo / ".git" / "BISECT_LOG").exists()


def test_flaky_step_still_finds_it(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, shas = history
    rng = random.Random(7)

    def step(sha: str, wt: Path) -> list[str]:  # the bug shows in half the runs
        return [FAIL if _buggy(wt) and rng.random() < 0.5 else PASS for _ in range(10)]

    res = _run(repo, shas, step, tmp_path)
    assert res.culprit == shas[5]
    assert res.confidence is not None and 0.9 < res.confidence < 1.0


def test_build_failures_are_skipped(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, shas = history
    broken = {shas[2], shas[3]}

    def step(sha: str, wt: Path) -> list[str]:
        if sha in broken:
            return [BUILD_FAIL]
        return [FAIL] * 3 if _buggy(wt) else [PASS] * 3

    res = _run(repo, shas, step, tmp_path)
    assert res.culprit == shas[5]
    skipped = [s for s, v in res.verdicts.items() if v.decision is Decision.SKIP]
    assert set(skipped) <= broken and skipped


def test_only_skipped_left_names_the_candidates(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, shas = history

    def step(sha: str, wt: Path) -> list[str]:
        if sha == shas[4]:
            return [BUILD_FAIL]
        return [FAIL] * 3 if _buggy(wt) else [PASS] * 3

    res = _run(repo, shas, step, tmp_path)
    assert res.culprit is None
    assert set(res.candidates) == {shas[4], shas[5]}


def test_replay_skips_logged_revisions(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, shas = history
    logf = tmp_path / "bisect.jsonl"
    calls: list[str] = []

    def step(sha: str, wt: Path) -> list[str]:
        calls.append(sha)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the first run is cut short after 3 revisions
        return [FAIL] * 3 if _buggy(wt) else [PASS] * 3

    with pytest.raises(KeyboardInterrupt):
        _run(repo, shas, step, tmp_path, log_path=logf)
    logged = read_log(logf)
    assert len(logged) == 3 and all(json.loads(ln)["decision"] for ln in logf.read_text().splitlines())
    assert len(_git(repo, "worktree", "list").splitlines()) == 1  # cleaned up even then

    calls.clear()
    res = _run(repo, shas, lambda s, w: calls.append(s) or ([FAIL] * 3 if _buggy(w) else [PASS] * 3),
               tmp_path, log_path=logf, replay=logged)
    assert res.culprit == shas[5]
    assert not set(calls) & set(logged)
    assert res.steps_run == len(calls)


def test_endpoint_that_does_not_hold_is_an_error(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, shas = history
    with pytest.raises(BisectError, match=r"good endpoint .* came out bad"):
        _run(repo, shas, lambda s, w: [FAIL] * 3, tmp_path)
    with pytest.raises(BisectError, match=r"bad endpoint .* came out good"):
        _run(repo, shas, lambda s, w: [PASS] * 3, tmp_path)
    assert len(_git(repo, "worktree", "list").splitlines()) == 1


def test_infra_errors_abort(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, shas = history
    ends = {shas[0], shas[-1]}

    def step(sha: str, wt: Path) -> list[str]:
        if sha not in ends:
            return [INFRA] * 3
        return [FAIL] * 3 if _buggy(wt) else [PASS] * 3

    with pytest.raises(BisectError, match=r"aborted .* infrastructure errors"):
        _run(repo, shas, step, tmp_path)


def test_bad_revisions_are_usage_errors(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, shas = history
    with pytest.raises(BisectError, match="not a commit"):
        run_bisect(repo, "nope", shas[-1], lambda s, w: [], work=tmp_path / "w", log_path=tmp_path / "l")
    with pytest.raises(BisectError, match="not an ancestor"):
        run_bisect(repo, shas[-1], shas[0], lambda s, w: [], work=tmp_path / "w", log_path=tmp_path / "l")
