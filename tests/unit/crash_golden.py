"""The crash parser's expected titles for tests/data/console/*.log (read by test_crash.py).

After a change to the format table or a new log, regenerate the golden file and review the diff:

    .venv/bin/python tests/unit/crash_golden.py      # rewrites tests/data/console/expected.json
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.core import crash

DATA = Path(__file__).resolve().parent.parent / "data" / "console"
EXPECTED = DATA / "expected.json"
LOGS = sorted(DATA.glob("*.log"))


def parse(path: Path) -> list[list[str]]:
    """The distinct ``[type, title]`` pairs ``crash.scan`` finds in one console log, in order."""
    lines = path.read_text(errors="replace").replace("\r", "").splitlines()
    out: list[list[str]] = []
    for c in crash.scan(lines):
        if [c.type, c.title] not in out:
            out.append([c.type, c.title])
    return out


def render() -> str:
    """expected.json's text: ``{log name: [[type, title], ...]}``."""
    return json.dumps({p.name: parse(p) for p in LOGS}, indent=1) + "\n"


if __name__ == "__main__":
    EXPECTED.write_text(render())
    print(f"wrote {EXPECTED} ({len(LOGS)} logs)")
