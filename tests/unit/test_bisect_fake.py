"""``pokelab bisect`` (``jobs.bisect_run``) with a scripted Execute (fakerun.py): each step's request, and
whole bisects over a tiny git history (the kernel build faked) and over Debian's packages (the
archive and the fetch faked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakerun import ScriptedExecute
from githistory import git, make_history

from orchestrator.core.errors import InfraError
from orchestrator.jobs import bisect_run
from orchestrator.jobs.bisect import BisectAborted
from orchestrator.jobs.bisect_run import BisectRequest
from orchestrator.kernels import images, kbuild
from orchestrator.kernels.debian import kernels_from, parse_show
from orchestrator.run.request import KernelChoice, RunRequest, VmOptions
from orchestrator.run.scenarios_table import BY_NAME

APT = Path(__file__).resolve().parent.parent / "data" / "apt" / "apt-cache-show-cloud-amd64.txt"
VM = VmOptions(smp=2, memory_mb=512, accel="tcg")


def _base(tmp_path: Path) -> RunRequest:
    return RunRequest(BY_NAME["ftrace-function"], tmp_path / "art", kernel=KernelChoice("6.1"), vm=VM,
                      inject="skip-call", inject_every=3)


def test_a_step_is_the_base_request_on_the_revision_s_kernel(tmp_path: Path) -> None:
    ex = ScriptedExecute(["FAIL", "BOOT_FAIL"])
    run_one = bisect_run.step_runner(_base(tmp_path), ex)
    assert run_one("custom-abc", tmp_path / "abc" / "run-1") == "FAIL"
    got = run_one("6.1.0-54-cloud-amd64", tmp_path / "x")
    assert got == "BOOT_FAIL" and type(got) is str  # bisect_logic's outcomes are plain strings
    first, second = ex.requests
    assert first.kernel == KernelChoice("custom-abc") and first.artifacts == tmp_path / "abc" / "run-1"
    assert second.kernel == KernelChoice("6.1.0-54-cloud-amd64")
    base = _base(tmp_path)
    assert first.but(kernel=base.kernel, artifacts=base.artifacts) == base  # nothing else changes



@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, list[str]]:
    """8 commits; from commit 5 on the 'kernel' has the bug; commit 3 does not build."""
    repo = tmp_path / "linux"
    return repo, make_history(
        repo, lambda i: f"{i} {'bug' if i >= 5 else 'ok'} {'broken' if i == 3 else 'builds'}\n")


def _fake_build(built: list[str]) -> Any:
    def build_kernel(source: Path, *args: Any, **kwargs: Any) -> kbuild.BuildResult:
        i, bug, builds = (source / "f.txt").read_text().split()
        if builds == "broken":
            raise kbuild.BuildError("make failed: error: 'x' undeclared")
        kid = f"custom-{i}-{bug}"
        built.append(kid)
        return kbuild.BuildResult(kid, source, "ab" * 20, f"6.9.0-{i}", 1.0, source)

    return build_kernel


def _verdict_of_kernel(request: RunRequest) -> str:
    return "FAIL" if str(request.kernel.kernel).endswith("-bug") else "PASS"


def test_a_git_bisect_runs_each_revision_through_execute(history: tuple[Path, list[str]], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    repo, shas = history
    monkeypatch.setenv("POKELAB_CACHE", str(tmp_path / "cache"))
    built: list[str] = []
    monkeypatch.setattr(kbuild, "build_kernel", _fake_build(built))
    ex = ScriptedExecute(_verdict_of_kernel)
    said: list[str] = []
    req = BisectRequest(_base(tmp_path), runs=2, source=repo, good=shas[0], bad=shas[-1], jobs=1)
    lines, code = bisect_run.run(req, ex, said.append)
    assert code == 0, lines
    assert lines[0] == f"{shas[5]} is the first bad commit"
    assert lines[1].startswith(f"  {shas[5][:7]}") and lines[1].endswith(" commit 5")
    assert lines[2].startswith("confidence 1.000 over ")
    # the endpoints first, each revision's runs in art/<sha12>/run-I on the kernel built there
    assert built[:2] == ["custom-0-ok", "custom-7-bug"]
    assert len(ex.requests) == 2 * len(built)
    for r in ex.requests:
        sha12 = r.artifacts.parent.name
        i = next(n for n, s in enumerate(shas) if s.startswith(sha12))
        assert r.kernel.kernel == f"custom-{i}-{'bug' if i >= 5 else 'ok'}"
        assert r.artifacts.parent.parent == tmp_path / "art" and r.artifacts.name in ("run-1", "run-2")
        assert r.vm == VM and r.inject == "skip-call" and r.scenario.name == "ftrace-function"
    logged = [json.loads(line) for line in (tmp_path / "art" / "bisect.jsonl").read_text().splitlines()]
    assert {rec["decision"] for rec in logged} <= {"good", "bad", "skip"}
    assert all(rec["outcomes"] in (["PASS", "PASS"], ["FAIL", "FAIL"], ["BUILD_FAIL"]) for rec in logged)
    assert ["BUILD_FAIL"] in [rec["outcomes"] for rec in logged]  # commit 3, skipped: no run of it
    assert git(repo, "rev-parse", "HEAD") == shas[-1]  # the user's checkout is untouched


def test_an_error_in_a_run_is_an_outcome_not_an_exception(history: tuple[Path, list[str]], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    repo, shas = history
    monkeypatch.setenv("POKELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kbuild, "build_kernel", _fake_build([]))

    def flaky_host(request: RunRequest) -> Any:
        if str(request.kernel.kernel).startswith(("custom-0-", "custom-7-")):
            return _verdict_of_kernel(request)
        raise InfraError("QEMU exited at start: x")  # every revision in between: the host broke

    said: list[str] = []
    req = BisectRequest(_base(tmp_path), runs=2, source=repo, good=shas[0], bad=shas[-1], jobs=1)
    with pytest.raises(BisectAborted, match="infrastructure errors in 2 of 2 runs"):
        bisect_run.run(req, ScriptedExecute(flaky_host), said.append)
    assert any(line.endswith("run 1: InfraError: QEMU exited at start: x") for line in said)


def test_a_debian_bisect_runs_each_package_through_execute(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POKELAB_CACHE", str(tmp_path / "cache"))
    kernels = kernels_from(parse_show(APT.read_text()))
    monkeypatch.setattr(bisect_run, "available", lambda cache, flavour, offline=False: kernels)
    fetched: list[Any] = []
    monkeypatch.setattr(images, "ensure_kernel", lambda spec, cache: fetched.append(spec))
    bad = ("6.1.0-54", "6.1.0-55", "6.1.0-56")

    def by_release(request: RunRequest) -> str:
        return "FAIL" if str(request.kernel.kernel).startswith(bad) else "PASS"

    ex = ScriptedExecute(by_release)
    req = BisectRequest(_base(tmp_path), runs=3, debian="6.1.0-47..6.1.0-56")
    lines, code = bisect_run.run(req, ex, lambda s: None)
    assert code == 0, lines
    assert lines[0] == "6.1.0-54-cloud-amd64 (6.1.190-1) is the first bad version"
    assert "--good v6.1.187 --bad v6.1.190 --scenario ftrace-function" in lines[2]
    kids = [r.kernel.kernel for r in ex.requests]
    assert kids[:6] == ["6.1.0-47-cloud-amd64"] * 3 + ["6.1.0-56-cloud-amd64"] * 3
    assert len(fetched) == len(kids) // 3
    for r in ex.requests:
        abi = str(r.kernel.kernel).removesuffix("-cloud-amd64")
        assert r.artifacts.parent == tmp_path / "art" / abi
        assert r.artifacts.name in ("run-1", "run-2", "run-3")


def test_one_run_per_revision_can_find_the_culprit(history: tuple[Path, list[str]], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``--runs 1``: one failing run marks a revision bad (the policy asks min(runs, 2) failures), else
    the bad endpoint itself would only ever be a skip."""
    repo, shas = history
    monkeypatch.setenv("POKELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kbuild, "build_kernel", _fake_build([]))
    req = BisectRequest(_base(tmp_path), runs=1, source=repo, good=shas[0], bad=shas[-1], jobs=1)
    said: list[str] = []
    lines, code = bisect_run.run(req, ScriptedExecute(_verdict_of_kernel), said.append)
    assert code == 0 and lines[0] == f"{shas[5]} is the first bad commit", lines
