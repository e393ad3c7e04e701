"""A tiny git history in tmp_path for bisect tests: one text file, one commit per revision."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout.strip()


def make_history(repo: Path, text_of: Callable[[int], str], n: int = 8) -> list[str]:
    """``n`` commits of ``f.txt`` (commit ``i`` holds ``text_of(i)``); their shas, oldest first."""
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.org")
    git(repo, "config", "user.name", "t")
    shas = []
    for i in range(n):
        (repo / "f.txt").write_text(text_of(i))
        git(repo, "add", "f.txt")
        git(repo, "commit", "-q", "-m", f"commit {i}")
        shas.append(git(repo, "rev-parse", "HEAD"))
    return shas
