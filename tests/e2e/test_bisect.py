"""End to end: bisect a small real git history of the kernel source to the commit that applies the bug patch.

Debian's linux-source-6.1 (the tree build-kernel uses) is committed into a scratch
git repo, then three more commits: a harmless comment change, the 2019 bug-class
patch, another comment change.  ``pokelab bisect --runs 2`` must name the patch
commit.  Slow (kernel builds, ccache helps): never part of `make test`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.host.cache import cache_dir, images_dir
from orchestrator.jobs.bisect import worktree_path
from orchestrator.kernels.kbuild import default_source, registered, unregister, work_dir

pytestmark = pytest.mark.slow

PATCH = images_dir() / "patches" / "0001-x86-alternative-emulate-call-to-ftrace_stub.patch"
SCENARIO = os.environ.get("POKELAB_E2E_BISECT_SCENARIO", "ftrace-function")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          timeout=1800).stdout.strip()


def _commit(repo: Path, msg: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", msg)
    return _git(repo, "rev-parse", "HEAD")


def test_bisect_finds_the_bug_patch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    src = Path(os.environ["POKELAB_KERNEL_SOURCE"]) if os.environ.get("POKELAB_KERNEL_SOURCE") \
        else default_source(cache_dir())
    repo = tmp_path / "linux"
    subprocess.run(["cp", "-a", f"{src}/.", str(repo)], check=True, timeout=1800)
    # the tarball's .gitignore ends with a Debian block ("/*", "!/debian/") that would make
    # `git add -A` add nothing: drop it (see KERNEL-FACTS.md, "Build pitfalls")
    gitignore = repo / ".gitignore"
    text = gitignore.read_text()
    if "# Debian packaging" in text:
        gitignore.write_text(text[:text.index("# Debian packaging")])
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "gc.auto", "0")
    _git(repo, "config", "user.email", "e2e@pokelab")
    _git(repo, "config", "user.name", "pokelab e2e")
    good = _commit(repo, "linux-source-6.1 as shipped")
    note = repo / "arch/x86/kernel/alternative.c"
    note.write_text(note.read_text() + "\n/* pokelab e2e: harmless change 1 */\n")
    _commit(repo, "harmless comment 1")
    subprocess.run(["patch", "-p1", "-i", str(PATCH)], cwd=repo, check=True, capture_output=True, timeout=60)
    culprit = _commit(repo, "bring back the 2019 bug class")
    note.write_text(note.read_text() + "/* pokelab e2e: harmless change 2 */\n")
    bad = _commit(repo, "harmless comment 2")
    print(f"history made in {time.monotonic() - started:.0f} s")

    logf = tmp_path / "bisect.jsonl"
    before = registered(cache_dir())
    try:
        status = cli.main(["bisect", "--source", str(repo), "--good", good, "--bad", bad,
                           "--scenario", SCENARIO, "--runs", "2", "--log", str(logf),
                           "--artifacts", str(tmp_path / "artifacts")])
    finally:  # this history is thrown away: so are its build dir (~2.3 GB) and the kernels it made
        wt = worktree_path(cache_dir() / "bisect", repo)
        shutil.rmtree(work_dir(wt, cache_dir()), ignore_errors=True)
        wt.with_name(wt.name + ".lock").unlink(missing_ok=True)
        unregister(sorted(registered(cache_dir()) - before), cache_dir())
    out = capsys.readouterr().out
    print(out)
    print(f"bisect wall time {time.monotonic() - started:.0f} s")
    assert status == 0
    assert f"{culprit} is the first bad commit" in out
    assert "confidence" in out
    assert len(logf.read_text().splitlines()) >= 3  # the endpoints and at least one midpoint
    assert _git(repo, "rev-parse", "HEAD") == bad  # the user's checkout is untouched
