"""The probe's per-batch trap budget: the figures the host gives the recorder, and how runs report it.

The accounting itself runs inside GDB (``data/pokelab_budget.py``, driven by
the recorder's batch, entry and return stops); see its docstring for the rules.
Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrapBudget:
    """Per batch: judge at most ``first`` traps; overall at most ``rate`` judged traps per host
    second (token bucket, ``burst`` saved up); per burst (one ftrace update, one static-key
    batch): watch at most ``batches_per_burst`` batches, then no stop at all until it ends.
    ``first=None``: every trap judged."""

    first: int | None = 64
    rate: float | None = 50.0
    burst: int | None = 256
    batches_per_burst: int | None = None

    def __post_init__(self) -> None:
        if self.first is not None and self.first < 1:
            raise ValueError(f"a trap budget needs first >= 1, not {self.first}")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"a trap budget's rate must be > 0 traps/s, not {self.rate}")
        if self.batches_per_burst is not None and self.batches_per_burst < 1:
            raise ValueError(f"batches_per_burst must be >= 1, not {self.batches_per_burst}")

    def args(self) -> dict[str, Any] | None:
        """What ``pokelab_setup`` takes (None: no budget)."""
        if self.first is None:
            return None
        return {"first": self.first, "rate": self.rate, "burst": self.burst,
                "batches_per_burst": self.batches_per_burst}


#: every run: no filtered switch measured here (1-25 traps per batch) is ever cut, so it acts
#: only under heavy patching, where it keeps the probe's stops (and QEMU 7.2's flushes) bounded
DEFAULT = TrapBudget()


def let_through(stats: dict[str, Any] | None) -> str | None:
    """A phrase saying that traps ran unstopped, from the recorder's budget stats; None if none did."""
    if not stats:
        return None
    cut, skipped, batches, blind = (int(stats.get(k) or 0) for k in
                                    ("batches_cut", "batches_skipped", "batches", "bursts_cut"))
    if not cut and not skipped and not blind:
        return None
    parts = []
    if cut:
        parts.append(f"{cut} batch(es) judged only their first {stats.get('first')} trap(s)")
    if skipped:
        parts.append(f"{skipped} batch(es) not watched (rate budget {stats.get('rate')}/s)")
    if blind:
        parts.append(f"{blind} burst(s) not watched after their first {stats.get('batches_per_burst')} "
                     f"batches (later batches not even counted)")
    return (f"traps let through unstopped and uncounted in {cut + skipped} of {batches} batches seen"
            + (" and in unseen batches" if blind else "") + ": " + ", ".join(parts))


def summary_line(stats: dict[str, Any] | None) -> str | None:
    """One line for the repro/probe summary: judged, sampled, let through, per batch."""
    if not stats:
        return None
    cut, skipped = int(stats.get("batches_cut") or 0), int(stats.get("batches_skipped") or 0)
    blind = int(stats.get("bursts_cut") or 0)
    per_burst = stats.get("batches_per_burst")
    return (f"trap budget (first {stats.get('first')}/batch, {stats.get('rate')}/s"
            + (f", {per_burst} batches/burst" if per_burst else "") + "): "
            f"{stats.get('batches', 0)} batches seen: {stats.get('batches_whole', 0)} watched whole "
            f"({stats.get('traps_in_whole_batches', 0)} traps judged), {cut} cut "
            f"({stats.get('traps_sampled', 0)} traps judged, the rest let through), "
            f"{skipped} not watched"
            + (f"; {blind} burst(s) went blind after {per_burst} batches" if blind else "")
            + (": traps let through were not counted" if cut or skipped or blind else ""))
