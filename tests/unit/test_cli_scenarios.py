"""``pokelab scenarios`` and ``pokelab repro`` without booting a guest."""

from __future__ import annotations

import pytest

from orchestrator.cli import main
from orchestrator.run.scenarios_table import SCENARIOS


def test_scenarios_lists_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [s.name for s in SCENARIOS]
    assert all(len(ln.split(None, 1)) == 2 for ln in lines)


def test_repro_unknown_scenario_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["repro", "no-such-scenario"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown scenario 'no-such-scenario'" in err[0]

