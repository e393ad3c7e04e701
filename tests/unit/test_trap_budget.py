"""The recorder's per-batch trap budget (orchestrator/gdb/data/pokelab_budget.py, run inside GDB).

Replayed on the recorder events of a real unfiltered function-tracer switch that ran with no
budget (tests/data/budget/): which traps the budget would have taken, and what it reports.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import budget, verdict

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "data" / "budget" / "unfiltered-6.1-no-budget.events"


def _module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "pokelab_budget", ROOT / "orchestrator" / "gdb" / "data" / "pokelab_budget.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TrapBudget = _module().TrapBudget


def events() -> list[tuple[str, float, int]]:
    """(kind, t, sites in the batch or 0)"""
    out = []
    for line in EVENTS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        kind, t, *n = line.split()
        out.append((kind, float(t), int(n[0]) if n else 0))
    return out


def replay(b: Any, evs: list[tuple[str, float, int]]) -> tuple[int, list[int]]:
    """Drive the budget as the recorder does: traps while disarmed are not seen, batches while
    blind are not seen.  Returns the traps taken and, per batch, the traps it really had.

    A batch of 256 sites (6.1's TP_VEC_MAX) is full.  The burst-end hooks (armed only while
    blind) fire at text_poke_finish()/text_poke_bp(), just before a burst's last (not full)
    batch or a single poke: the capture has no such stops, so one is put before each batch
    that is not full while the budget is blind."""
    taken, per_batch = 0, []
    for kind, t, n in evs:
        if kind == "B":
            if b.blind and n < 256:
                b.on_burst_end(t)
            if not b.blind:
                b.on_batch(t, full=n == 256)
            per_batch.append(0)
            continue
        if per_batch:
            per_batch[-1] += 1
        if b.armed:
            taken += 1
            b.on_trap(t)
    return taken, per_batch


def test_the_captured_switch_is_heavy() -> None:
    evs = events()
    _, per_batch = replay(TrapBudget(None), evs)
    assert len(per_batch) >= 15 and max(per_batch) > 1000  # one batch took >1000 traps unbudgeted


def test_no_budget_takes_every_trap() -> None:
    b = TrapBudget(None)
    taken, per_batch = replay(b, events())
    assert taken == sum(per_batch) == b.stats()["traps_taken"]
    s = b.stats()
    assert s["batches_cut"] == s["batches_skipped"] == 0
    assert budget.let_through(s) is None


def test_first_n_per_batch() -> None:
    b = TrapBudget(4)
    taken, per_batch = replay(b, events())
    expected = [min(4, n) for n in per_batch]
    assert taken == sum(expected)
    s = b.stats()
    assert s["batches"] == len(per_batch)
    assert s["batches_cut"] == sum(1 for n in per_batch if n >= 4)
    assert s["traps_taken"] == taken
    assert s["traps_sampled"] == 4 * s["batches_cut"]
    assert s["traps_in_whole_batches"] == sum(n for n in per_batch if n < 4)
    assert s["batches_whole"] == sum(1 for n in per_batch if n < 4)
    phrase = budget.let_through(s)
    assert phrase and f"{s['batches_cut']} batch(es)" in phrase


def test_rate_budget_skips_batches_and_refills() -> None:
    b = TrapBudget(4, rate=1.0, burst=4)
    assert b.on_batch(0.0) and b.left == 4
    for _ in range(4):
        b.on_trap(0.0)
    assert not b.armed and b.stats()["batches_cut"] == 1
    assert not b.on_batch(0.5)  # no token left: the batch runs unwatched
    assert b.stats()["batches_skipped"] == 1
    assert b.on_batch(2.6) and b.left == 2  # 2.6 s at 1/s: 2 whole tokens
    assert b.on_trap(2.6) is False and b.on_trap(2.6) is True
    assert b.stats()["traps_sampled"] == 6
    assert not b.on_batch(2.7)
    assert b.on_batch(100.0) and b.left == 4  # saved up at most `burst`


def test_replayed_rate_budget_bounds_the_traps() -> None:
    evs = events()
    span = evs[-1][1] - evs[0][1]
    b = TrapBudget(4, rate=2.0, burst=8)
    taken, per_batch = replay(b, evs)
    assert taken <= 8 + 2.0 * span + 1
    assert taken < sum(per_batch) / 10


def test_bad_figures() -> None:
    with pytest.raises(ValueError):
        TrapBudget(0)
    with pytest.raises(ValueError):
        TrapBudget(4, rate=0)
    with pytest.raises(ValueError):
        budget.TrapBudget(first=0)
    assert budget.TrapBudget(first=None, rate=None, burst=None).args() is None  # every trap judged
    assert budget.DEFAULT.args() == {"first": 64, "rate": 50.0, "burst": 256, "batches_per_burst": None}


def test_pass_reason_says_traps_were_let_through() -> None:
    stats = {"first": 4, "rate": 10.0, "batches": 140, "batches_cut": 100, "batches_skipped": 30,
             "batches_whole": 10, "traps_taken": 420, "traps_sampled": 400, "traps_in_whole_batches": 20}
    out = verdict.decide({"traps_judged": 420, "budget": stats}, crashes=[], min_judged=2)
    assert out.verdict == "PASS"
    assert "let through" in out.reasons[0] and "130 of 140 batches" in out.reasons[0]
    line = budget.summary_line(stats)
    assert line and "400 traps judged, the rest let through" in line and "not counted" in line
    quiet = verdict.decide({"traps_judged": 5, "budget": {**stats, "batches_cut": 0, "batches_skipped": 0}},
                           crashes=[], min_judged=2)
    assert "let through" not in quiet.reasons[0]


def test_a_burst_goes_blind_after_its_batches_and_rearms_at_its_end() -> None:
    evs = events()
    b = TrapBudget(2, batches_per_burst=3)
    taken, per_batch = replay(b, evs)
    s = b.stats()
    # the switch's burst is its run of full batches: blind from its 4th
    big = [i for i, (_k, _t, n) in enumerate(e for e in evs if e[0] == "B") if n == 256]
    trigger = big[3]
    assert s["bursts_cut"] == 1
    assert s["batches"] == trigger + 1  # seen: every batch up to the one that went blind
    assert taken == sum(min(2, per_batch[i]) for i in range(trigger))
    assert sum(per_batch[trigger:]) > 1000  # what the blind burst let through, uncounted
    assert "burst(s) not watched after their first 3 batches" in (budget.let_through(s) or "")
    b.on_burst_end(999.0)
    assert b.armed and not b.blind and b.on_batch(999.0)


def test_blind_ends_only_at_a_burst_end() -> None:
    b = TrapBudget(1, batches_per_burst=1)
    assert b.on_batch(0.0)
    assert b.on_batch(0.05, full=False) and b.in_burst == 0  # a single poke: not part of a burst
    assert b.on_batch(0.06)
    assert not b.on_batch(0.1) and b.blind
    assert b.on_burst_end(0.2) is True  # it was blind
    assert b.on_burst_end(0.3) is False
    with pytest.raises(ValueError):
        TrapBudget(1, batches_per_burst=0)
