"""The verdict vocabulary and verdicts from counts: one pure module, so every caller judges alike.

:class:`Verdict` is the one set of names; each error class of :mod:`.errors` carries
the verdict it stands for (:func:`verdict_for`); :data:`EXIT_CODES` maps verdicts
(and the nightly matrix's cell states) to process exit statuses; the verdict sets
every job uses (:data:`REPRODUCED`, :data:`FAILING`, :data:`PROVES_NOTHING`) are named here once.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .budget import let_through


class Verdict(enum.StrEnum):
    """What one run says about the kernel (a ``str``: JSON and comparisons see ``"PASS"``)."""

    PASS = "PASS"  # every emulation judged was right, enough were judged
    FAIL = "FAIL"  # the kernel emulated wrong (or a scenario's own check failed)
    CRASH = "CRASH"  # the kernel oopsed, panicked or locked up, and the probe had seen nothing wrong
    BOOT_FAIL = "BOOT_FAIL"  # the kernel did not boot to SSH
    INFRA = "INFRA"  # pokelab or the host broke: nothing is said about the kernel
    INCONCLUSIVE = "INCONCLUSIVE"  # the run proved nothing (too few traps, a load that did not run, ...)
    UNSUPPORTED = "UNSUPPORTED"  # the kernel lacks what the check needs
    USAGE = "USAGE"  # the command line or a file given was wrong


#: the runs that reproduce a bug: ``repro --runs`` counts them, ``--until-fail`` stops at one,
#: a bisect revision with enough of them is bad
REPRODUCED = frozenset({Verdict.FAIL, Verdict.CRASH})
#: the verdicts that fail a nightly cell (exit 1): the kernel did wrong, booting included
FAILING = frozenset({Verdict.FAIL, Verdict.CRASH, Verdict.BOOT_FAIL})
#: verdicts that say nothing about the kernel (the host, the harness or the check's reach)
PROVES_NOTHING = frozenset({Verdict.INFRA, Verdict.INCONCLUSIVE, Verdict.UNSUPPORTED})

#: One table maps every verdict to the process exit status (README documents it).
EXIT_CODES: dict[str, int] = {
    Verdict.PASS: 0,
    Verdict.FAIL: 1,
    Verdict.CRASH: 1,
    Verdict.BOOT_FAIL: 1,
    Verdict.INFRA: 2,
    Verdict.INCONCLUSIVE: 2,
    Verdict.UNSUPPORTED: 2,
    Verdict.USAGE: 2,
    # matrix cells (pokelab nightly/merge, nightly.exit_key): an UNSUPPORTED cell is a skip,
    # a failure a known-issues entry explains does not fail the night, a cell not run does
    "SKIP": 0,
    "KNOWN_ISSUE": 0,
    "INCOMPLETE": 2,
}


def verdict_for(exc: BaseException) -> Verdict:
    """The verdict an error stands for: its class's ``verdict`` (:mod:`.errors`), else INFRA."""
    v = getattr(type(exc), "verdict", None)
    return v if isinstance(v, Verdict) else Verdict.INFRA


#: crash types reported by the guest's own hang detectors (``crash.FORMATS``): they measure guest
#: time, which the probe's stops stretch (QEMU < 10.2 re-translates everything after each stop)
STALL_TYPES = frozenset({"rcu-stall", "soft-lockup", "hard-lockup", "hung-task"})
#: guest stops per second (over the 30 s before the report was seen) from which a stall report
#: is not taken as the kernel's fault: 2/s is ~40 ms of forced re-translation per second on QEMU 7.2
PROBE_STALL_RATE = 2.0


def probe_blame(crash_types: Sequence[str], stops_per_s: float | None,
                threshold: float = PROBE_STALL_RATE) -> str | None:
    """Why the probe may have caused the console's reports, or None.  Pure.

    Only when every report is a stall/lockup/hung-task report (an oops, BUG or
    WARNING stays the kernel's) and the probe was stopping the guest at
    ``threshold`` stops/s or more.
    """
    if not crash_types or stops_per_s is None or stops_per_s < threshold:
        return None
    if any(t not in STALL_TYPES for t in crash_types):
        return None
    return (f"the probe stopped the guest {stops_per_s:.1f} times/s in the 30 s before it was seen "
            f"(>= {threshold:g}/s): the probe may have caused it, not a kernel verdict")


@dataclass(frozen=True)
class Outcome:
    verdict: str
    reasons: tuple[str, ...]


def decide(summary: dict[str, Any], *, crashes: list[str], min_judged: int = 1,
           inject: str | None = None, load_ok: bool = True,
           floor_count: int | None = None, floor_what: str = "traps judged",
           failed_checks: Sequence[str] = (), unknown_checks: Sequence[str] = (),
           probe_blame: str | None = None) -> Outcome:
    """The verdict of one probed run.

    Order matters: an emulation violation the probe saw is a FAIL even when the
    kernel crashed afterwards (the crash is named as a further reason: the 2025
    int3 oops, c8976ade0c1b, follows a declined live site, and the violation is
    the finding); otherwise a crash outranks everything (the console says who is
    to blame); a text mismatch is a FAIL; a run whose recorder lost or
    garbled records cannot vouch for every emulation (INFRA); too few judged
    traps prove nothing (INCONCLUSIVE).  ``failed_checks`` are a scenario's own
    expectations that did not hold (site text, tracer output): each one is a FAIL;
    ``unknown_checks`` are checks that could not be made (why, each): INCONCLUSIVE.
    With an injection the run is expected to FAIL: every injected trap flagged
    and nothing else.  ``probe_blame`` (from :func:`probe_blame`): the crashes
    are stall reports the probe's stop rate may explain: INCONCLUSIVE, saying so.
    """
    reasons: list[str] = []
    violations = int(summary.get("violations", 0))
    mismatches = int(summary.get("text_mismatches", 0))
    if violations:
        reasons.append(f"{violations} emulation violation(s)")
        if inject:
            reasons.append(f"{summary.get('injected_flagged', 0)} of {summary.get('injected', 0)} "
                           f"injected traps flagged, {summary.get('false_flags', 0)} other(s) flagged")
    if crashes:
        why = "; ".join(crashes[:3])
        if inject:
            why += f" (with --inject {inject}: the corruption may have caused it)"
        if not violations and probe_blame:
            return Outcome("INCONCLUSIVE", ("; ".join(crashes[:3]) + " while " + probe_blame,))
        if not violations:
            return Outcome("CRASH", (why,))
        return Outcome("FAIL", (*reasons, f"then the kernel crashed: {why}"))
    if mismatches:
        reasons.append(f"{mismatches} site(s) hold other text than the last one written")
    reasons.extend(failed_checks)
    if reasons:
        return Outcome("FAIL", tuple(reasons))
    broken = int(summary.get("recorder_errors", 0)) + int(summary.get("bad_records", 0))
    lost = int(summary.get("lost", 0))
    if broken or lost:
        return Outcome("INFRA", (f"recorder errors {broken}, lost stops {lost}: not every trap was judged",))
    if not load_ok:
        return Outcome("INCONCLUSIVE", ("the load generators did not run on every loaded vCPU",))
    judged = int(summary.get("traps_judged", 0))
    counted = judged if floor_count is None else floor_count
    unstopped = let_through(summary.get("budget"))
    if counted < min_judged:
        return Outcome("INCONCLUSIVE", (f"{counted} {floor_what}, fewer than the floor of {min_judged}"
                                        + (f" ({unstopped})" if unstopped else ""),))
    if unknown_checks:
        return Outcome("INCONCLUSIVE", tuple(unknown_checks))
    if inject and int(summary.get("injected", 0)) == 0:
        return Outcome("INCONCLUSIVE", (f"--inject {inject}: no trap was eligible for injection",))
    checked = int(summary.get("text_checks", 0))
    unchecked = int(summary.get("text_unchecked", 0))
    freed = int(summary.get("text_freed", 0))
    notes = ([f"{unchecked} more patched sites not read back"] if unchecked else []) + (
        [f"{freed} not checked: text freed"] if freed else [])
    return Outcome("PASS", (f"{judged} trap(s) judged, 0 violations, {checked} site read-backs matched"
                            + (f" ({'; '.join(notes)})" if notes else "")
                            + (f"; {unstopped}" if unstopped else ""),))


def run_rate(verdicts: Sequence[str]) -> dict[str, Any]:
    """``runs``, ``failures`` (FAIL or CRASH) and ``rate`` (failures / runs) of repeated runs, and the
    overall verdict: the first failure's, else the first non-PASS one, else PASS.  Pure."""
    failures = [v for v in verdicts if v in REPRODUCED]
    others = [v for v in verdicts if v != "PASS"]
    overall = (failures or others or ["PASS" if verdicts else "INCONCLUSIVE"])[0]
    return {"runs": len(verdicts), "failures": len(failures),
            "rate": round(len(failures) / len(verdicts), 4) if verdicts else 0.0, "verdict": overall}


#: ``pokelab repro --bisect-exit-codes``: what ``git bisect run`` understands.  0 good, 1 bad,
#: 125 "cannot test this revision" for every verdict that proves nothing about the kernel.
BISECT_EXIT_CODES: dict[str, int] = {
    "PASS": 0,
    "FAIL": 1,
    "CRASH": 1,
    "BOOT_FAIL": 125,
    "INFRA": 125,
    "INCONCLUSIVE": 125,
    "UNSUPPORTED": 125,
}

#: a usage error under ``--bisect-exit-codes``: the command line is wrong, not the revision.
#: ``git bisect run`` takes 1-127 but 125 as "bad" and 125 as "skip" (which would skip every
#: revision in turn); any status above 127 aborts the bisect at once, so the user sees the error.
#: An interrupted run exits 130/143 (128 + signal) with or without the flag: it aborts too.
BISECT_USAGE_EXIT = 128


def exit_status(verdict: str, *, bisect: bool = False) -> int:
    """The process exit status of a verdict (or "USAGE"): :data:`EXIT_CODES`, or with
    ``bisect`` (``--bisect-exit-codes``) :data:`BISECT_EXIT_CODES` and :data:`BISECT_USAGE_EXIT`."""
    if not bisect:
        return EXIT_CODES[verdict]
    if verdict == "USAGE":
        return BISECT_USAGE_EXIT
    return BISECT_EXIT_CODES[verdict]


def interrupted_outcome(summary: dict[str, Any], *, crashes: list[str], signal_name: str) -> Outcome:
    """The verdict of a run cut short by a signal: never PASS.

    What was judged until then may already prove a failure (a violation, a site
    holding other text, an oops on the console): that verdict stands.  Anything
    else is INCONCLUSIVE: the run did not do what it was asked to.
    """
    full = decide(summary, crashes=crashes)
    judged = int(summary.get("traps_judged", 0))
    why = f"interrupted by {signal_name} after {judged} trap(s) judged"
    if full.verdict in ("FAIL", "CRASH"):
        return Outcome(full.verdict, (*full.reasons, why))
    return Outcome("INCONCLUSIVE", (why + (f", {int(summary.get('violations', 0))} violations"
                                           if judged else ": nothing proven"),))
