"""The bisect decision logic on scripted histories (no kernel)."""

from __future__ import annotations

import math

import pytest

from orchestrator.core.bisect_logic import (
    BOOT_FAIL,
    BUILD_FAIL,
    CRASH,
    EXIT_CODES,
    FAIL,
    INFRA,
    PASS,
    Decision,
    LinearBisect,
    Policy,
    Tally,
    confidence,
    culprit_confidence,
    decide,
    failure_rate,
)

P = Policy(min_failures=2, min_clean=3)


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        ([PASS, PASS, PASS], Decision.GOOD),
        ([PASS] * 10, Decision.GOOD),
        ([FAIL, FAIL, FAIL], Decision.BAD),
        ([FAIL, PASS, CRASH], Decision.BAD),  # flaky but twice: bad
        ([PASS, PASS, FAIL, PASS, FAIL], Decision.BAD),
        ([FAIL, PASS, PASS, PASS], Decision.SKIP),  # one failure is not enough for bad, too many for good
        ([PASS, PASS], Decision.SKIP),  # not enough clean runs
        ([BUILD_FAIL], Decision.SKIP),
        ([BOOT_FAIL, BOOT_FAIL, BOOT_FAIL], Decision.SKIP),
        ([BOOT_FAIL, PASS, PASS], Decision.SKIP),
        ([BOOT_FAIL, PASS, PASS, PASS], Decision.GOOD),  # enough clean runs despite one boot failure
        ([INFRA, INFRA, PASS], Decision.ABORT),
        ([INFRA, PASS], Decision.SKIP),  # a tie is not "outnumber"
        ([INFRA, "INCONCLUSIVE", FAIL], Decision.ABORT),
        ([INFRA, FAIL, FAIL, PASS], Decision.BAD),
        ([], Decision.SKIP),
    ],
)
def test_decide(runs: list[str], expected: Decision) -> None:
    assert decide(runs, P).decision is expected


def test_build_failure_wins_over_everything() -> None:
    v = decide([BUILD_FAIL, FAIL, FAIL], P)
    assert v.decision is Decision.SKIP and EXIT_CODES[v.decision] == 125 and "build" in v.reason


def test_exit_codes_table() -> None:
    assert EXIT_CODES == {Decision.GOOD: 0, Decision.BAD: 1, Decision.SKIP: 125, Decision.ABORT: 128}
    assert EXIT_CODES[decide([INFRA] * 3, P).decision] >= 128


def test_reasons_say_why() -> None:
    assert "bad needs 2" in decide([FAIL, PASS, PASS, PASS], P).reason
    assert "good needs 3" in decide([PASS], P).reason
    assert "boot failed" in decide([BOOT_FAIL], P).reason


def test_unknown_outcome_rejected() -> None:
    with pytest.raises(ValueError):
        decide(["MAYBE"], P)
    with pytest.raises(ValueError):
        Policy(min_failures=0)


def test_confidence_formula() -> None:
    # p = 0.5, two good verdicts with 3 and 5 clean runs
    assert confidence(0.5, [3, 5]) == pytest.approx((1 - 0.5**3) * (1 - 0.5**5))
    assert confidence(1.0, [1, 1, 1]) == 1.0  # a deterministic bug: every good is right
    assert confidence(None, [3]) is None
    assert confidence(0.3, []) == 1.0


def test_flaky_history_confidence() -> None:
    """A bisect over 5 revisions of a bug that shows in ~1/3 of the runs."""
    history = {
        "v0 (good endpoint)": [PASS] * 6,
        "r1": [PASS] * 6,
        "r2 (build broken)": [BUILD_FAIL],
        "r3 culprit": [FAIL, PASS, PASS, FAIL, PASS, PASS],
        "r4": [PASS, CRASH, PASS, FAIL, PASS, PASS],
        "v5 (bad endpoint)": [FAIL, PASS, FAIL, PASS, PASS, FAIL],
    }
    verdicts = {rev: decide(runs, P) for rev, runs in history.items()}
    assert [v.decision for v in verdicts.values()] == [
        Decision.GOOD, Decision.GOOD, Decision.SKIP, Decision.BAD, Decision.BAD, Decision.BAD]
    bad = [v.tally for v in verdicts.values() if v.decision is Decision.BAD]
    p = failure_rate(bad)
    assert p == pytest.approx(7 / 18)
    conf = culprit_confidence(list(verdicts.values()))
    assert conf == pytest.approx((1 - (1 - 7 / 18) ** 6) ** 2)
    assert 0.85 < conf < 0.9  # 6 clean runs of a 1-in-3 bug leave ~5% doubt per good verdict


def test_flaky_single_failure_is_skip_not_good() -> None:
    # a rare failure must never be swallowed into "good"
    assert decide([PASS] * 9 + [FAIL], P).decision is Decision.SKIP


def test_confidence_of_clean_runs() -> None:
    assert math.isclose(confidence(0.25, [11]) or 0, 1 - 0.75**11)


def test_tally_counts() -> None:
    t = Tally.of([PASS, FAIL, CRASH, INFRA, BOOT_FAIL])
    assert (t.failures, t.clean, t.infra, t.total, t.judged) == (2, 1, 1, 5, 3)


def _walk(n: int, truth: dict[int, Decision]) -> tuple[LinearBisect, list[int]]:
    """Bisect n items; item i judges as truth[i] (default: good below the first bad, bad from it)."""
    lb = LinearBisect(n)
    lb.record(0, Decision.GOOD)
    lb.record(n - 1, Decision.BAD)
    tried = []
    while (i := lb.next()) is not None:
        assert i not in tried
        tried.append(i)
        lb.record(i, truth[i])
    return lb, tried


@pytest.mark.parametrize("first_bad", range(1, 9))
def test_linear_bisect_finds_every_first_bad_in_log_steps(first_bad: int) -> None:
    n = 9
    truth = {i: Decision.BAD if i >= first_bad else Decision.GOOD for i in range(n)}
    lb, tried = _walk(n, truth)
    assert lb.candidates == [first_bad]
    assert len(tried) <= math.ceil(math.log2(n - 1))


def test_linear_bisect_steps_around_skips() -> None:
    n = 6  # items 1..4 untried; first bad is 3; item 2 cannot be judged
    truth = {1: Decision.GOOD, 2: Decision.SKIP, 3: Decision.BAD, 4: Decision.BAD}
    lb, tried = _walk(n, truth)
    assert lb.candidates == [2, 3]  # 2 was skipped, so the first bad is 2 or 3
    assert 2 in tried


def test_linear_bisect_all_skipped() -> None:
    lb, tried = _walk(4, {1: Decision.SKIP, 2: Decision.SKIP})
    assert sorted(tried) == [1, 2]
    assert lb.candidates == [1, 2, 3]


def test_linear_bisect_two_items_needs_no_step() -> None:
    lb = LinearBisect(2)
    lb.record(0, Decision.GOOD)
    lb.record(1, Decision.BAD)
    assert lb.next() is None and lb.candidates == [1]


def test_linear_bisect_non_monotone_history_uses_the_oldest_bad() -> None:
    lb = LinearBisect(8)
    lb.record(0, Decision.GOOD)
    lb.record(7, Decision.BAD)
    lb.record(3, Decision.BAD)
    lb.record(5, Decision.GOOD)  # good after a bad one: ignored for the gap
    assert lb.gap() == (0, 3)
    assert lb.next() in (1, 2)


def test_linear_bisect_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        LinearBisect(1)
    lb = LinearBisect(3)
    with pytest.raises(ValueError):
        lb.record(1, Decision.ABORT)
    with pytest.raises(IndexError):
        lb.record(3, Decision.GOOD)
