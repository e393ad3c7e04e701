"""Issue 14, item 5: the CLI only parses, calls a job and renders; no argparse outside it.

Cheap guards (no import of the package): the line count of ``orchestrator/cli/*.py``
and where ``argparse`` is imported.
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"

#: the most lines orchestrator/cli/*.py may have in all; issue 14 asks for under 400: lower this
#: as the CLI shrinks, never raise it (logic goes to jobs/, filesystem checks to host/)
CLI_LINES_MAX = 465

def test_argparse_only_in_the_cli() -> None:
    imports = re.compile(r"^\s*(import argparse|from argparse import)", re.M)
    outside = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.parent.name != "cli" and imports.search(p.read_text())]
    assert outside == []
