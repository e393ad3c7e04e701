"""The bisect step's decision, statistically (as syzbot does), and the culprit's confidence.

Pure logic, no kernel: a revision's outcomes come in, a decision goes out.

* build failure                                 -> skip  (the revision cannot be judged)
* infrastructure errors outnumber everything else -> abort (the bisect cannot be trusted)
* at least ``min_failures`` failing runs (FAIL or CRASH)  -> bad
* 0 failing runs and at least ``min_clean`` clean runs    -> good
* otherwise (one failure, too few clean runs, boot failures) -> skip

``git bisect run`` reads the decision as an exit code (:data:`EXIT_CODES`).

Confidence of the culprit: a flaky bug shows with probability ``p`` per run
(estimated from the runs on the revisions judged bad).  A good verdict backed
by ``n`` clean runs is wrong with probability ``(1-p)**n``; the culprit is right
when every good verdict is, so confidence = prod(1 - (1-p)**n_i).  Bad verdicts
need >= 2 failures of a checker that does not report false positives, so they
are taken as certain.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from . import verdict as run_verdict

#: run outcomes: the probe's verdicts plus what can go wrong before it runs (a revision that does
#: not build)
_V = run_verdict.Verdict
PASS, FAIL, CRASH, INFRA, BOOT_FAIL = _V.PASS, _V.FAIL, _V.CRASH, _V.INFRA, _V.BOOT_FAIL
BUILD_FAIL = "BUILD_FAIL"
FAILING = run_verdict.REPRODUCED
#: verdicts that say nothing about the kernel (the host or the harness broke)
INFRA_LIKE = run_verdict.PROVES_NOTHING
OUTCOMES = frozenset({PASS, BOOT_FAIL, BUILD_FAIL}) | FAILING | INFRA_LIKE


class Decision(enum.Enum):
    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"
    ABORT = "abort"


#: the one table from decisions to ``git bisect run`` exit codes
EXIT_CODES: Mapping[Decision, int] = {
    Decision.GOOD: 0,
    Decision.BAD: 1,
    Decision.SKIP: 125,
    Decision.ABORT: 128,  # > 127: git bisect run stops
}


@dataclass(frozen=True)
class Policy:
    min_failures: int = 2  # failing runs needed to call a revision bad
    min_clean: int = 3  # clean runs (and no failure) needed to call it good

    def __post_init__(self) -> None:
        if self.min_failures < 1 or self.min_clean < 1:
            raise ValueError("min_failures and min_clean must be >= 1")


@dataclass(frozen=True)
class Tally:
    """Counts of one revision's outcomes."""

    counts: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, outcomes: Iterable[str]) -> Tally:
        c = Counter(outcomes)
        unknown = set(c) - OUTCOMES
        if unknown:
            raise ValueError(f"unknown outcomes {sorted(unknown)}")
        return cls(dict(c))

    def n(self, *names: str) -> int:
        return sum(self.counts.get(k, 0) for k in names)

    @property
    def failures(self) -> int:
        return self.n(*FAILING)

    @property
    def clean(self) -> int:
        return self.n(PASS)

    @property
    def infra(self) -> int:
        return self.n(*INFRA_LIKE)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def judged(self) -> int:
        """Runs that reached a verdict about the kernel."""
        return self.failures + self.clean


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    tally: Tally


def decide(outcomes: Iterable[str] | Tally, policy: Policy = Policy()) -> Verdict:
    """The decision for one revision from its run outcomes (see the module doc)."""
    t = outcomes if isinstance(outcomes, Tally) else Tally.of(outcomes)
    if t.n(BUILD_FAIL):
        return Verdict(Decision.SKIP, "build failed", t)
    if t.total == 0:
        return Verdict(Decision.SKIP, "no runs", t)
    if t.infra > t.total - t.infra:
        return Verdict(Decision.ABORT, f"infrastructure errors in {t.infra} of {t.total} runs", t)
    if t.failures >= policy.min_failures:
        return Verdict(Decision.BAD, f"{t.failures} failing runs of {t.judged}", t)
    if t.failures == 0 and t.clean >= policy.min_clean:
        return Verdict(Decision.GOOD, f"{t.clean} clean runs, no failure", t)
    if t.failures:
        why = f"{t.failures} failing run (bad needs {policy.min_failures})"
    elif t.n(BOOT_FAIL):
        why = f"boot failed in {t.n(BOOT_FAIL)} of {t.total} runs, {t.clean} clean"
    else:
        why = f"only {t.clean} clean runs (good needs {policy.min_clean})"
    return Verdict(Decision.SKIP, why, t)


def failure_rate(bad_tallies: Sequence[Tally]) -> float | None:
    """Observed per-run failure probability on the revisions judged bad (None if none)."""
    judged = sum(t.judged for t in bad_tallies)
    if judged == 0:
        return None
    return sum(t.failures for t in bad_tallies) / judged


def confidence(p: float | None, clean_runs_per_good: Sequence[int]) -> float | None:
    """Probability that no good verdict is wrong: prod(1 - (1-p)**n). None without an estimate of p."""
    if p is None:
        return None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"failure rate {p} is not a probability")
    conf = 1.0
    for n in clean_runs_per_good:
        conf *= 1.0 - (1.0 - p) ** n
    return conf


def culprit_confidence(verdicts: Sequence[Verdict]) -> float | None:
    """Confidence figure of a finished bisect from all its verdicts (endpoints included)."""
    bad = [v.tally for v in verdicts if v.decision is Decision.BAD]
    good = [v.tally.clean for v in verdicts if v.decision is Decision.GOOD]
    return confidence(failure_rate(bad), good)


@dataclass
class LinearBisect:
    """``git bisect``'s rules on an ordered list (prebuilt packages): item 0 good, item n-1 bad.

    The answer lies between the newest good item below the oldest bad one and
    that bad one.  :meth:`next` picks the untried item nearest the middle of
    that gap (skipped items are stepped around); when none is left, the oldest
    bad item is the culprit, or, with skipped items in the gap, one of those
    or it (:attr:`candidates`).
    """

    n: int
    decisions: dict[int, Decision] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError("a bisect needs at least a good and a bad item")

    def record(self, index: int, decision: Decision) -> None:
        if not 0 <= index < self.n:
            raise IndexError(index)
        if decision is Decision.ABORT:
            raise ValueError("an aborted step ends the bisect; it is not recorded")
        self.decisions[index] = decision

    def gap(self) -> tuple[int, int]:
        """(newest good below the oldest bad, oldest bad); the endpoints count as judged."""
        bads = [i for i, d in self.decisions.items() if d is Decision.BAD]
        hi = min(bads, default=self.n - 1)
        goods = [i for i, d in self.decisions.items() if d is Decision.GOOD and i < hi]
        return max(goods, default=0), hi

    def next(self) -> int | None:
        """The next item to judge, or None when the gap holds only skipped items."""
        lo, hi = self.gap()
        untried = [i for i in range(lo + 1, hi) if i not in self.decisions]
        if not untried:
            return None
        mid = (lo + hi) / 2
        return min(untried, key=lambda i: (abs(i - mid), i))

    @property
    def candidates(self) -> list[int]:
        """Where the first bad item can be (meaningful once :meth:`next` is None)."""
        lo, hi = self.gap()
        return [i for i in range(lo + 1, hi) if self.decisions.get(i) is Decision.SKIP] + [hi]
