"""``pokelab nightly`` and ``merge`` as jobs: a typed request in, a summary and its reports out.

:class:`NightlyRequest` is built once from argv; :func:`plan` checks it and lists the
cells (nothing is fetched or booted: ``--dry-run`` prints them); :func:`run` runs
each cell as a :class:`~orchestrator.run.request.RunRequest` through an
:data:`~orchestrator.run.execute.Execute` (a fake one in unit tests), then writes
the reports (:func:`.nightly.write_reports`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..core.errors import PokelabError, UsageError
from ..core.fields import option
from ..host.cache import cache_dir
from ..kernels.catalog import Catalog
from ..kernels.debian import cached_spec, fetchable, remembered, resolve_dry
from ..kernels.images import custom_kernel
from ..run.execute import Execute
from ..run.request import KernelChoice, RunRequest, VmOptions
from ..run.result import RunResult
from ..run.scenario import Scenario, with_options
from ..run.scenario_file import nightly_table
from ..run.scenarios_table import BY_NAME, SCENARIOS
from .nightly import (
    Cell,
    Runner,
    annotate,
    exit_status,
    load_known_issues,
    matrix,
    merge,
    new_summary,
    parse_list,
    parse_shard,
    run_matrix,
    shard,
    write_reports,
)
from .repro import MAX_CYCLES

#: ``-j`` at most: VMs at once (each is a QEMU with its RAM and a TCG thread)
MAX_JOBS = 64


@dataclass(frozen=True)
class Reports:
    """Where the reports go and what they compare with (nightly and merge)."""

    out_dir: Path
    previous: Path | None = field(default=None, metadata=option(
        "a previous summary.json to compare with", metavar="SUMMARY", path="text"))
    known_issues: Path | None = field(default=None, metadata=option(
        "known flakes (TOML or JSON, docs/nightly.md)", metavar="FILE", path="text"))
    kcidb: Path | None = field(default=None, metadata=option(
        "also write KCIDB-style JSON here", metavar="FILE", path="new-file"))
    artifacts_url: str | None = field(default=None, metadata=option(
        "where OUT is published: KCIDB output_files URLs are made from it", metavar="URL"))


@dataclass(frozen=True)
class NightlyRequest:
    """``kernels``/``scenarios``: comma lists as given (None: every cached or fetchable catalog
    kernel, every built-in scenario); ``shard``: ``I/N``; ``jobs``: VMs at a time."""

    reports: Reports
    vm: VmOptions = field(default_factory=VmOptions)
    kernels: str | None = field(default=None, metadata=option(
        "kernel ids as --kernel takes them: catalog, custom-*, Debian ABIs (default: every catalog kernel "
        "cached or fetchable)", metavar="A,B"))
    scenarios: str | None = field(default=None, metadata=option(
        "scenario names or scenario files FILE.toml (default: every built-in scenario)", metavar="A,B"))
    repeat: int | None = field(default=None, metadata=option("cycles of each scenario's steps", metavar="N",
                                                             type=int))
    shard: str | None = field(default=None, metadata=option(
        "run only shard I of N (1-based, deterministic)", metavar="I/N"))
    jobs: int = field(default=1, metadata=option("parallel VMs", flag="-j --jobs", metavar="N", type=int))


@dataclass(frozen=True)
class Plan:
    """The cells to run and their scenarios; ``unresolved``: default kernels that an offline plan
    (``--dry-run``) kept without knowing whether the archive still has them."""

    cells: tuple[Cell, ...]
    table: Mapping[str, Scenario]
    unresolved: tuple[str, ...] = ()


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{what} {path}: not JSON ({exc})") from None


def _summary(path: Path, what: str) -> dict[str, Any]:
    """A nightly summary.json read and checked for what is read of it: UsageError naming the file
    otherwise (a night's reports must not die on a bad --previous after the cells ran)."""
    data = _read_json(path, what)
    results = data.get("results") if isinstance(data, dict) else None
    keys = ("kernel_id", "scenario", "verdict")
    if not isinstance(results, list) or not all(
            isinstance(r, dict) and all(isinstance(r.get(k), str) for k in keys) for r in results):
        raise UsageError(f"{what} {path}: not a pokelab nightly summary (a 'results' list of cells, each "
                         "with kernel_id, scenario and verdict)")
    return data


def context(rep: Reports) -> tuple[Any, list[Any]]:
    """(previous summary or None, known issues); a bad file is a UsageError."""
    previous = _summary(rep.previous, "--previous") if rep.previous else None
    issues: list[Any] = []
    if rep.known_issues is not None:
        try:
            issues = load_known_issues(rep.known_issues)
        except OSError as exc:
            raise UsageError(f"--known-issues {rep.known_issues}: {exc.strerror}") from None
        except ValueError as exc:
            raise UsageError(f"--known-issues {rep.known_issues}: {exc}") from None
    kc = rep.kcidb
    if kc is not None and not kc.resolve().parent.is_dir() and kc.resolve().parent != rep.out_dir.resolve():
        raise UsageError(f"--kcidb {kc}: directory does not exist")
    if rep.artifacts_url is not None:
        _check_url(rep.artifacts_url, kcidb=kc is not None)
    return previous, issues


def _check_url(url: str, kcidb: bool) -> None:
    """``--artifacts-url``: an absolute URL (KCIDB wants them), and only with ``--kcidb`` (the one
    output that uses it); UsageError otherwise."""
    if not kcidb:
        raise UsageError("--artifacts-url goes with --kcidb FILE (only the KCIDB export has URLs)")
    parts = urlsplit(url)
    if not parts.scheme or not (parts.netloc or parts.scheme == "file") or any(c.isspace() for c in url):
        raise UsageError(f"--artifacts-url {url!r}: not an absolute URL (such as https://host/nightly)")


def plan(req: NightlyRequest, offline: bool = False) -> Plan:
    """The cells of this night (this shard), checked: UsageError for an unknown kernel or scenario.

    ``offline`` (``--dry-run``): no archive is asked and nothing is written, not even the cache dir;
    a kernel named in ``--kernels`` that pokelab's apt lists (as they are) lack is a UsageError, as
    in ``repro --dry-run``; a default kernel neither cached nor resolved here before is kept, and
    named in ``unresolved`` (a real run asks the archive and leaves it out if it has none)."""
    try:
        kernels = parse_list(req.kernels, "--kernels")
        scenarios = parse_list(req.scenarios, "--scenarios")
        shard_of = parse_shard(req.shard)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not 1 <= req.jobs <= MAX_JOBS:
        raise UsageError(f"-j {req.jobs}: VMs at once, from 1 to {MAX_JOBS}")
    if req.repeat is not None and not 1 <= req.repeat <= MAX_CYCLES:
        raise UsageError(f"--repeat {req.repeat}: from 1 to {MAX_CYCLES}")
    req.vm.check()
    cat, cache = Catalog.load(), cache_dir(create=not offline)
    for k in kernels or []:  # catalog ids, kernels built here, Debian ABIs (as --kernel takes)
        if k.startswith("custom-"):
            custom_kernel(k, cache)  # a usage error if it was never built here
        else:  # its own line says why (unknown, or older than pokelab's apt sources)
            request = cat.lookup(k)
            if offline:  # as repro --dry-run: from the lists as they are, a kernel they lack refused
                resolve_dry(request, cache)
    table = nightly_table(scenarios or [s.name for s in SCENARIOS], BY_NAME)  # names and FILE.toml
    unresolved: list[str] = []
    if kernels is None and offline:
        unresolved = [k.id for k in cat.kernels if not cached_spec(k, cache) and not remembered(k, cache)]
        kernels = [k.id for k in cat.kernels]
    elif kernels is None:
        kernels = [k.id for k in cat.kernels if cached_spec(k, cache) or fetchable(k, cache)]
    cells = matrix(kernels, list(table))
    if shard_of is not None:
        cells = shard(cells, *shard_of)
    return Plan(tuple(cells), table, tuple(unresolved))


def dry_run_lines(p: Plan, fmt: str, say: Callable[[str], None]) -> list[str]:
    """``nightly --dry-run``: one ``KERNEL SCENARIO`` line per cell; ``say`` names the kernels kept
    without the archive's word.  UsageError for ``--format ktap``: a dry run has no results to report."""
    if fmt != "text":
        raise UsageError(f"--dry-run prints the cells as text, not {fmt}: it has no results to report "
                         "(drop --format or --dry-run)")
    if p.unresolved:
        say(f"dry run: {', '.join(p.unresolved)} never resolved here; a real run asks the archive and "
            "leaves out what it does not have")
    return [f"{k} {s}" for k, s in p.cells]


def cell_runner(req: NightlyRequest, table: Mapping[str, Scenario], execute: Execute) -> Runner:
    """One matrix cell, the way ``pokelab repro`` runs a scenario (a RunRequest through ``execute``)."""
    def run(kernel: str, scenario: str, artifacts: Path) -> dict[str, Any]:
        request = RunRequest(with_options(table[scenario], repeat=req.repeat), artifacts,
                             kernel=KernelChoice(kernel), vm=req.vm)
        try:
            return execute(request).as_dict()
        except PokelabError as exc:  # a usage error of this cell alone (a kernel gone from the archive)
            result = RunResult.of_error(exc, {"kernel_id": kernel, "scenario": scenario,
                                              "artifacts": str(artifacts)})
            result.write()
            return result.as_dict()

    return run


def run(req: NightlyRequest, p: Plan, execute: Execute,
        progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the cells and write the reports (also when interrupted: what ran, the rest MISSING)."""
    previous, issues = context(req.reports)
    out_dir = req.reports.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    progress(f"nightly: {len(p.cells)} cell(s), {req.jobs} at a time, into {out_dir}")
    results: list[dict[str, Any]] = []
    try:
        run_matrix(p.cells, cell_runner(req, p.table, execute), out_dir, jobs=req.jobs, results=results,
                   progress=progress)
    finally:
        order = {c: i for i, c in enumerate(p.cells)}
        results.sort(key=lambda r: order.get((r["kernel_id"], r["scenario"]), len(order)))
        summary = annotate(new_summary(p.cells, results, shard_spec=req.shard, started=started),
                           previous, issues)
        write_reports(summary, out_dir, req.reports.kcidb, req.reports.artifacts_url)
    return summary


def merge_shards(rep: Reports, summaries: Sequence[Path]) -> dict[str, Any]:
    """``pokelab merge``: shard summaries joined, annotated, reported."""
    previous, issues = context(rep)
    out_dir = rep.out_dir.resolve()
    loaded = [(_summary(p, "summary"), p.resolve().parent) for p in summaries]
    try:
        summary = merge(loaded, out_dir)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"merge: {exc}") from None
    summary = annotate(summary, previous, issues)
    write_reports(summary, out_dir, rep.kcidb, rep.artifacts_url)
    return summary


def report_lines(summary: Mapping[str, Any], out_dir: Path) -> tuple[list[str], int]:
    """The text lines of a night (one per cell) and its exit status."""
    code = exit_status(dict(summary))
    lines = []
    for r in summary["results"]:
        mark = (f" [known issue {r['known_issue']['id']}]" if r.get("known_issue")
                else f" [{r['change']}]" if r.get("change") else "")
        lines.append(f"{r['kernel_id']:10} {r['scenario']:24} {r['verdict']}{mark}")
    lines.append(f"reports: {out_dir}/index.html, junit.xml, summary.json; exit status {code}")
    return lines, code
