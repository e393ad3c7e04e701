"""The real ``pokelab`` console script in a subprocess, and the one-line error it must print."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

POKELAB = Path(sys.executable).parent / "pokelab"
DEADLINE = 60.0  # a failing CLI answers in about a second; this only guards against a hang


def pokelab(*args: str, env: dict[str, str] | None = None,
            artifacts: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(POKELAB)] if POKELAB.exists() else [sys.executable, "-m", "orchestrator.cli"]
    full_env = dict(os.environ if env is None else env)
    if artifacts is not None:
        full_env["POKELAB_ARTIFACTS"] = str(artifacts)  # nothing lands in the repo's artifacts/
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=DEADLINE,
                          stdin=subprocess.DEVNULL, env=full_env, check=False)


def assert_one_line_error(res: subprocess.CompletedProcess[str], verdict: str, *needles: str) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{res.stderr}"
    line = lines[0]
    assert res.returncode == 2, f"exit {res.returncode}: {line}"
    assert line.startswith(f"pokelab: {verdict}: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert res.stdout == ""
    return line
