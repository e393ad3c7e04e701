"""``pokelab repro``'s choices and results, apart from the CLI's parsing.

What a run is made of (a built-in scenario, a scenario file, or a ``--trigger``),
the one verdict of one or more runs (an interrupted one included), and how it
is printed (``--format text|ktap``) and which status it exits with
(``verdict.exit_status``, ``--bisect-exit-codes``).  Pure but for the files
:func:`choose` loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core import ktap
from ..core.errors import UsageError
from ..core.verdict import run_rate
from ..run import scenario_file, trigger
from ..run.scenario import Scenario, with_options

FORMATS = ("text", "ktap")


@dataclass(frozen=True)
class Choice:
    scenario: Scenario
    #: more keys of the verdict JSON, filled in during the run (the trigger's results)
    info: dict[str, Any] = field(default_factory=dict)


def choose(name: str | None, *, trigger_path: Path | None, function: str | None, min_judged: int | None,
           repeat: int | None, builtin: Callable[[str], Scenario | None]) -> Choice:
    """The scenario to run: SCENARIO (a name or FILE.toml) or ``--trigger``; UsageError if neither
    or both, or if what they name is bad."""
    if min_judged is not None and min_judged < 1:
        raise UsageError("--min-judged must be at least 1 (0 traps prove nothing)")
    if trigger_path is not None:
        if name is not None:
            raise UsageError(f"give a SCENARIO or --trigger, not both ({name!r} and {trigger_path})")
        run = trigger.TriggerRun(trigger.load(trigger_path))
        sc = trigger.scenario(run, function=function, min_judged=min_judged or 1, repeat=repeat or 1)
        return Choice(sc, {"trigger": run.results})
    if name is None:
        raise UsageError("give a SCENARIO (a name from `pokelab scenarios`, or a FILE.toml) "
                         "or --trigger FILE")
    sc = with_options(scenario_file.resolve(name, builtin), repeat=repeat, function=function)
    if min_judged is not None:
        sc = replace(sc, min_traps=min_judged)
    return Choice(sc)


def combine(results: Sequence[dict[str, Any]], *, runs: int | None, interrupted: str | None,
            extra: dict[str, Any]) -> dict[str, Any]:
    """The verdict of ``pokelab repro``: the one run's, or with ``--runs`` the rate and each run's.

    ``interrupted``: the signal that cut the runs short (None: not interrupted); the
    verdict is then never PASS (a PASS so far becomes INCONCLUSIVE) and ``interrupted``
    is true.  ``extra``: the keys of a ``--runs`` summary (scenario, kernel, ...).
    """
    rate = run_rate([str(r["verdict"]) for r in results])
    if runs is None and results:
        final = {**results[0], **{k: rate[k] for k in ("runs", "failures", "rate")}}
    else:
        final = {**extra, "runs_requested": runs, **rate,
                 "reasons": next((o.get("reasons", []) for o in results if o["verdict"] == rate["verdict"]),
                                 []),
                 "per_run": [{"run": i + 1, "verdict": o["verdict"], "reasons": o.get("reasons", []),
                              "traps_judged": o.get("traps_judged", 0), "violations": o.get("violations", 0),
                              "artifacts": o.get("artifacts"), **({"interrupted": True}
                                                                 if o.get("interrupted") else {})}
                             for i, o in enumerate(results)]}
    if interrupted is not None:
        final["interrupted"] = True
        if final["verdict"] == "PASS" or not results:
            final["verdict"] = "INCONCLUSIVE"
            final["reasons"] = [f"interrupted by {interrupted} after {len(results)} of "
                                f"{runs or 1} run(s): nothing proven", *final.get("reasons", [])]
    return final


def ktap_text(final: dict[str, Any]) -> str:
    """``--format ktap``: the verdict as a KTAP v1 document (``ktap.from_repro``)."""
    return ktap.from_repro(final)
