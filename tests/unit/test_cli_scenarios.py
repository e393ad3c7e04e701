"""``pokelab scenarios`` and ``pokelab repro`` without booting a guest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.scenarios_table import SCENARIOS


def test_scenarios_lists_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [s.name for s in SCENARIOS]
    assert all(len(ln.split(None, 1)) == 2 for ln in lines)


def test_repro_unknown_scenario_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["repro", "no-such-scenario"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown scenario 'no-such-scenario'" in err[0]


def test_repro_unsupported_scenario_writes_json_without_booting(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from orchestrator import scenarios_table
    from orchestrator.cache import cache_dir
    from orchestrator.debian import cached_spec
    from orchestrator.kernels import Catalog

    if cached_spec(Catalog.load().default, cache_dir()) is None:
        pytest.skip("the default kernel is not cached (make images)")
    # every scenario in the table runs here: declare one this version cannot run
    sc = replace(scenarios_table.BY_NAME["ops-one"], name="not-here",
                 unsupported="this needs a module that is not built in this version")
    monkeypatch.setitem(scenarios_table.BY_NAME, sc.name, sc)
    out = tmp_path / "v.json"
    rc = main(["repro", "not-here", "--accel", "tcg", "--artifacts", str(tmp_path / "a"),
               "--json", str(out)])
    assert rc == 2
    v = json.loads(out.read_text())
    assert v["verdict"] == "UNSUPPORTED" and "module" in v["reasons"][0]
    for key in ("scenario", "kernel", "verdict", "traps_judged", "violations", "reasons"):
        assert key in v
    assert not (tmp_path / "a" / "console.log").exists()  # never booted
