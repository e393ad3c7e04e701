"""``pokelab repro``: one scenario, once or ``--runs N`` times (``--until-fail``), one verdict.

What a run is made of (a built-in scenario, a scenario file, or a ``--trigger``:
:func:`choose`), the runs (:func:`run`, through an :data:`~orchestrator.run.execute.Execute`
so unit tests give it a fake), the one verdict of them all (:func:`combine`, an
interrupted run included), and its text (:func:`summary_lines`) and KTAP forms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core import ktap
from ..core.budget import summary_line
from ..core.errors import RunInterrupted, Terminated, UsageError
from ..core.fields import option
from ..core.verdict import REPRODUCED, run_rate
from ..run import scenario_file, trigger
from ..run.execute import Execute
from ..run.probe_run import trap_targets
from ..run.request import KernelChoice, RunRequest, VmOptions
from ..run.result import VERDICT_FILE, RunResult
from ..run.scenario import Scenario, with_options
from . import guest

#: the files of a run's artifact dir, in the order they are listed
ARTIFACT_FILES = ("console.log", "traps.jsonl", "mi.log", "qmp.jsonl", VERDICT_FILE, "repro.sh")

FORMATS = ("text", "ktap")


@dataclass(frozen=True)
class ReproOptions:
    """What ``pokelab repro`` (and ``probe``) take beyond the run itself: what to run, how often, how
    to report."""

    trigger: Path | None = field(default=None, metadata=option(
        "instead of a scenario: your trigger (a script, a binary, a .tc file or a dir of .tc files) copied "
        "in and run from vCPU 0, the default load on the others", metavar="FILE|DIR", path="file-or-dir"))
    function: str | None = field(default=None, metadata=option(
        "trace this function instead (the real symbol); repro with --trigger: the function whose site "
        "is read back and whose traps count to the floor"))
    min_judged: int | None = field(default=None, metadata=option(
        "the floor: fewer traps judged (at the traced function's site) is INCONCLUSIVE", metavar="N",
        type=int))
    repeat: int | None = field(default=None, metadata=option("cycles of the scenario's steps", metavar="N",
                                                             type=int))
    runs: int | None = field(default=None, metadata=option(
        "boot and run the scenario N times, each in artifacts/run-I (a failure rate)", metavar="N", type=int))
    until_fail: bool = field(default=False, metadata=option(
        "with --runs: stop at the first FAIL or CRASH", action="store_true"))
    gdb: bool = field(default=False, metadata=option(
        "at the first violation leave the guest stopped and print the gdb command; Ctrl-C ends it",
        action="store_true"))
    format: str = field(default="text", metadata=option(
        "stdout: text or KTAP v1 (the text lines go to stderr)", choices=FORMATS))
    bisect_exit_codes: bool = field(default=False, metadata=option(
        "exit as `git bisect run` expects: 0 PASS, 1 FAIL/CRASH, 125 other verdicts, 128 bad usage (aborts "
        "the bisect)", action="store_true"))
    json: Path | None = field(default=None, metadata=option(
        "write the JSON verdict here too", metavar="FILE", path="out-file"))


@dataclass(frozen=True)
class Choice:
    scenario: Scenario
    #: more keys of the verdict JSON, filled in during the run (the trigger's results)
    info: dict[str, Any] = field(default_factory=dict)


def choose(name: str | None, opts: ReproOptions, builtin: Callable[[str], Scenario | None]) -> Choice:
    """The scenario to run: SCENARIO (a name or FILE.toml) or ``--trigger``, with ``opts``' function,
    floor and repeat; UsageError if neither or both, if what they name is bad, or for bad counts."""
    check_runs(opts.repeat, opts.runs, opts.until_fail)
    trigger_path, function, min_judged, repeat = opts.trigger, opts.function, opts.min_judged, opts.repeat
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


#: cycles of a scenario's steps at most (``--repeat``, ``probe --toggles``): a tracer switch takes
#: ~1 s here, so 100,000 would be more than a day
MAX_CYCLES = 100_000
#: ``--runs`` at most (a run boots a guest: ~1 min here, so 10,000 would be a week)
MAX_RUNS = 10_000


def check_runs(repeat: int | None, runs: int | None, until_fail: bool) -> None:
    """Usage errors of ``--repeat``, ``--runs`` and ``--until-fail`` (no scenario, kernel or file needed)."""
    if repeat is not None and not 1 <= repeat <= MAX_CYCLES:
        raise UsageError(f"--repeat {repeat}: from 1 to {MAX_CYCLES}")
    if runs is not None and not 1 <= runs <= MAX_RUNS:
        raise UsageError(f"--runs {runs}: from 1 to {MAX_RUNS}")
    if until_fail and runs is None:
        raise UsageError("--until-fail needs --runs N (the most runs to try)")


#: what ``pokelab probe`` runs: the function tracer toggled on a filtered function under load
PROBE_SCENARIO = "ftrace-function"


def probe_scenario(toggles: int, function: str | None, min_judged: int | None) -> Scenario:
    """``pokelab probe --toggles N --function F --min-judged M``: the built-in ftrace-function scenario
    with N cycles on F (default its own, ``__do_sys_getpid``), the floor M traps at F's site (default 1)."""
    from ..run.scenarios_table import BY_NAME

    if not 1 <= toggles <= MAX_CYCLES:
        raise UsageError(f"--toggles {toggles}: from 1 to {MAX_CYCLES}")
    if min_judged is not None and min_judged < 1:
        raise UsageError("--min-judged must be at least 1 (0 traps prove nothing)")
    sc = with_options(BY_NAME[PROBE_SCENARIO], repeat=toggles, function=function)
    return replace(sc, min_traps=min_judged or 1)


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


def dry_run_line(kernel: KernelChoice, vm: VmOptions, artifacts: Path, fmt: str) -> str:
    """``repro``/``probe --dry-run``: the QEMU command line (:func:`guest.dry_run_line`).
    UsageError for ``--format ktap``: a dry run has no verdict to put in a KTAP document."""
    if fmt != "text":
        raise UsageError(f"--dry-run prints the QEMU command line, not {fmt}: it has no verdict to "
                         "report (drop --format or --dry-run)")
    return guest.dry_run_line(kernel, vm, artifacts)


def ktap_text(final: RunResult) -> str:
    """``--format ktap``: the verdict as a KTAP v1 document (``ktap.from_repro``)."""
    return ktap.from_repro(final.as_dict())


@dataclass(frozen=True)
class Repro:
    """The runs of one ``pokelab repro`` and their one verdict (``final``, written to
    ``<artifacts>/verdict.json``); ``stopped``: (signal name, exit status) if a signal ended them."""

    final: RunResult
    runs: tuple[RunResult, ...]
    stopped: tuple[str, int] | None
    many: bool  # --runs: each run in artifacts/run-I, the final verdict a rate


def run(request: RunRequest, execute: Execute, *, runs: int | None = None, until_fail: bool = False,
        say: Callable[[str], None] = lambda s: None) -> Repro:
    """Run ``request`` once, or ``runs`` times (each in ``artifacts/run-I``), stopping at the first
    FAIL or CRASH with ``until_fail``.  SIGINT/SIGTERM between or during runs ends them: the
    verdict of what ran is written (never PASS) and ``stopped`` says which signal."""
    results: list[RunResult] = []
    stopped: tuple[str, int] | None = None
    n = runs or 1
    try:
        for i in range(n):
            req = request if runs is None else request.but(artifacts=request.artifacts / f"run-{i + 1}")
            if runs is not None:
                say(f"run {i + 1}/{n}")
            try:
                res = execute(req)
            except RunInterrupted as exc:  # its verdict.json is written; the runs' one follows
                results.append(exc.result if isinstance(exc.result, RunResult)
                               else RunResult.from_record(exc.out))
                stopped = (exc.signal_name, exc.code)
                break
            results.append(res)
            if runs is not None:
                say(f"run {i + 1}/{n}: {res.verdict} in {res.get('phases', {}).get('total_s', 0):.1f} s")
            if until_fail and res.verdict in REPRODUCED:
                break
    except KeyboardInterrupt:  # between runs
        stopped = ("SIGINT", 130)
    except Terminated as exc:  # SIGTERM between runs
        stopped = ("SIGTERM", exc.code if isinstance(exc.code, int) else 143)
    first = results[0] if results else None
    extra = {"scenario": request.scenario.name, "kernel": first.get("kernel") if first else None,
             "kernel_id": first.get("kernel_id") if first else request.kernel.kernel,
             **{k: first.get(k) for k in ("kernel_package", "kernel_version", "qemu", "qemu_version",
                                            "machine") if first is not None},
             "inject": request.inject, "until_fail": until_fail, "artifacts": str(request.artifacts)}
    final = RunResult.from_record(combine([r.as_dict() for r in results], runs=runs,
                                          interrupted=stopped[0] if stopped else None, extra=extra))
    final.write(request.artifacts / VERDICT_FILE)
    return Repro(final, tuple(results), stopped, runs is not None)


def summary_lines(out: RunResult) -> list[str]:
    """The short trap summary of one run: sites, opcodes, targets, violations, artifacts."""
    floor = out.get("floor_traps")
    lines = [f"traps judged {out.get('traps_judged', 0)}"
             + (f" ({floor} at the watched sites)" if floor is not None else "")
             + f", violations {out.get('violations', 0)}"]
    budget_line = summary_line(out.get("budget"))
    if budget_line:
        lines.append("  " + budget_line)
    wd = out.get("watchdogs")
    if isinstance(wd, dict | Mapping):
        lines.append(f"  guest watchdogs (x{wd['slowdown']}): RCU stall {wd['rcu_cpu_stall_timeout_s']} s, "
                     f"soft lockup {wd['soft_lockup_after_s']} s, hung task {wd['hung_task_timeout_s']} s")
    sites = out.get("sites") or {}
    if sites:
        top = sorted(sites.items(), key=lambda kv: -kv[1]["traps"])[:5]
        lines.append(f"  sites ({len(sites)}): "
                     + ", ".join(f"{v['name']} {k} x{v['traps']}" for k, v in top))
    if out.get("opcodes"):
        lines.append("  opcodes: " + ", ".join(f"{k} x{v}" for k, v in out["opcodes"].items()))
    users, batches = out.get("users") or {}, out.get("batch_users") or {}
    if users or batches:
        lines.append("  users: " + (", ".join(f"{k} x{v}" for k, v in users.items()) or "-")
                     + "  (batches: " + (", ".join(f"{k} x{v}" for k, v in batches.items()) or "-") + ")")
    targets = trap_targets(out.get("trap_log"))
    if targets:
        lines.append(f"  targets ({len(targets)}): " + ", ".join(f"{k} x{v}" for k, v in targets[:5]))
    for v in list(out.get("violation_examples") or [])[:3]:
        lines.append(f"  violation at {v.get('symbol')}: {v.get('reason')}")
    if out.artifacts is not None:
        present = [f for f in ARTIFACT_FILES if (out.artifacts / f).exists()]
        lines.append(f"artifacts: {out.artifacts}  ({' '.join(present)})")
    return lines


def report_lines(rep: Repro) -> list[str]:
    """What ``pokelab repro`` prints: the verdict line, the runs, the last run's summary."""
    final = rep.final
    kernel = final.get("kernel") or final.get("kernel_id") or "the default kernel"
    lines = [f"{final.get('scenario')} on {kernel}: {final.verdict}  "
             f"({'; '.join(final.reasons)})"]
    if rep.many:
        lines.append(f"runs {final['runs']}, failures {final['failures']}, rate {final['rate']:.2f}")
        lines.extend(f"  {o.verdict:12} {o.artifacts}" for o in rep.runs)
    for i, line in enumerate(summary_lines(rep.runs[-1]) if rep.runs else []):
        lines.append(f"run {len(rep.runs)}: {line}" if rep.many and i == 0 else line)
    if rep.many and final.artifacts is not None:
        lines.append(f"summary: {final.artifacts / VERDICT_FILE}")
    return lines


def scenario_lines() -> list[str]:
    """``pokelab scenarios``: each built-in scenario's name and description, a line each."""
    from ..run.scenarios_table import SCENARIOS

    width = max(len(s.name) for s in SCENARIOS)
    return [f"{s.name:{width}}  {s.description}" for s in SCENARIOS]
