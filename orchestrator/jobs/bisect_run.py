"""``pokelab bisect`` as a job: a typed request, each revision's runs through one Execute, the answer.

Git mode builds each revision (kbuild), Debian mode fetches each kernel; both run
the scenario ``runs`` times per revision as a :class:`~orchestrator.run.request.RunRequest`
(the same path as ``pokelab repro``) and decide with :mod:`orchestrator.core.bisect_logic`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.bisect_logic import Policy
from ..core.errors import UsageError
from ..core.fields import option
from ..host.cache import cache_dir
from ..kernels.catalog import DEFAULT_FLAVOUR, Catalog
from ..kernels.debian import DebianRange, available, parse_range, resolve, select_range
from ..run.execute import Execute
from ..run.request import KernelChoice, RunRequest
from .bisect import (
    commit_line,
    debian_report,
    debian_step,
    kernel_step,
    plan_git,
    read_log,
    run_bisect,
    run_debian_bisect,
)
from .repro import MAX_RUNS

log = logging.getLogger(__name__)
Say = Callable[[str], None]


@dataclass(frozen=True)
class BisectRequest:
    """``base``: the run of each step (its kernel is replaced by each revision's, its artifacts dir
    is the bisect's); git mode: ``source``, ``good``, ``bad``; Debian mode: ``debian`` (GOOD..BAD)."""

    base: RunRequest
    runs: int = field(default=3, metadata=option(
        "scenario runs per revision (good needs min(N, 3) clean runs and no failure, bad needs min(N, 2) "
        "failing runs)", metavar="N", type=int))
    source: Path | None = field(default=None, metadata=option(
        "a git kernel checkout (bisected in a scratch worktree; yours is not touched)", metavar="DIR",
        path="dir"))
    good: str | None = field(default=None, metadata=option(
        "with --source: a revision the scenario passes on", metavar="REV"))
    bad: str | None = field(default=None, metadata=option(
        "with --source: a revision the scenario fails on", metavar="REV"))
    debian: str | None = field(default=None, metadata=option(
        "bisect the Debian cloud-amd64 kernels apt knows between two versions, named by ABI (6.1.0-47), "
        "release, package version (6.1.170-3) or catalog id (6.1)", metavar="GOOD..BAD"))
    log: Path | None = field(default=None, metadata=option(
        "JSON-lines bisect log (default: --replay's file, else under the artifacts)", metavar="FILE",
        path="new-file"))
    replay: Path | None = field(default=None, metadata=option(
        "resume from a bisect log: logged revisions are not run again", metavar="FILE", path="text"))
    jobs: int = field(default=2, metadata=option("make -j with --source", flag="-j --jobs", metavar="N",
                                                 type=int))
    #: the scenario as the user named it (a FILE.toml path too), for the command line to go on with
    scenario_arg: str | None = None

    def check(self) -> None:
        """UsageError for a request that cannot start (before anything is built or fetched)."""
        if self.debian is not None:
            for opt in ("source", "good", "bad"):
                if getattr(self, opt) is not None:
                    raise UsageError(f"--{opt} does not go with --debian (GOOD..BAD names both endpoints)")
            parse_range(self.debian)
        elif self.source is None or self.good is None or self.bad is None:
            raise UsageError("give --source DIR --good REV --bad REV, or --debian GOOD..BAD")
        elif not (self.source / ".git").exists():
            raise UsageError(f"--source {self.source} is not a git checkout (no .git there)")
        if not 1 <= self.runs <= MAX_RUNS:  # repro --runs's bound
            raise UsageError(f"--runs {self.runs}: from 1 to {MAX_RUNS}")
        if self.jobs < 1:
            raise UsageError("-j must be at least 1")
        self.base.vm.check()

    @property
    def policy(self) -> Policy:
        """What makes a revision good or bad: ``runs`` capped by the defaults (3 clean, 2 failing)."""
        return Policy(min_failures=min(2, self.runs), min_clean=min(3, self.runs))

    @property
    def log_path(self) -> Path:
        return (self.log or self.replay or self.base.artifacts / "bisect.jsonl").resolve()


def step_runner(base: RunRequest, execute: Execute) -> Callable[[str, Path], str]:
    """One run of one revision: ``base`` on kernel ``kernel_id`` in ``where``; its verdict."""
    def run_one(kernel_id: str, where: Path) -> str:
        return str(execute(base.but(kernel=KernelChoice(kernel_id), artifacts=where)).verdict)

    return run_one


def run(req: BisectRequest, execute: Execute, say: Say, dry_run: bool = False) -> tuple[list[str], int]:
    """Bisect; the answer's lines and the exit status (0 found, 1 not narrowed to one, 2 not a regression).
    ``dry_run``: :func:`dry_run_lines` and 0."""
    if dry_run:
        return dry_run_lines(req), 0
    req.check()
    replay = read_log(req.replay) if req.replay is not None else None
    policy = req.policy
    run_one = step_runner(req.base, execute)
    art = req.base.artifacts
    if req.debian is not None:
        return _debian(req, policy, replay, run_one, say)
    assert req.source is not None and req.good is not None and req.bad is not None
    step = kernel_step(lambda sha, i, res: run_one(res.kernel_id, art / sha[:12] / f"run-{i + 1}"),
                       jobs=req.jobs, runs=req.runs, say=say)
    res = run_bisect(req.source, req.good, req.bad, step, work=cache_dir(create=False) / "bisect",
                     log_path=req.log_path, replay=replay, policy=policy, say=say)
    conf = "unknown" if res.confidence is None else f"{res.confidence:.3f}"
    if res.culprit is None:
        return (["only skipped commits left; the first bad commit is one of:",
                 *(f"  {commit_line(req.source, c)}" for c in res.candidates),
                 f"confidence {conf}  (log: {req.log_path})"], 1)
    return ([f"{res.culprit} is the first bad commit", f"  {commit_line(req.source, res.culprit)}",
             f"confidence {conf} over {len(res.verdicts)} judged revisions, {res.steps_run} run now "
             f"(log: {req.log_path})"], 0)


def dry_run_lines(req: BisectRequest) -> list[str]:
    """``bisect --dry-run``: what the bisect would judge and how, with nothing built, fetched, booted
    or written (git is only read; the Debian kernels come from pokelab's apt lists as they are).
    UsageError for what a real run would refuse, and for Debian lists never fetched here."""
    req.check()
    replay = read_log(req.replay) if req.replay is not None else {}
    scenario = req.scenario_arg or req.base.scenario.name
    each = (f"up to {req.runs} run{'s' if req.runs > 1 else ''} of {scenario} "
            f"(good: {req.policy.min_clean} clean and no failure; bad: {req.policy.min_failures} failing)")
    if req.debian is not None:
        rng = _debian_range(req, offline=True)
        n = len(rng.judged)
        steps = math.ceil(math.log2(n - 1)) if n > 2 else 0
        lines = [f"Debian {rng.judged[0].label} (good) .. {rng.judged[-1].label} (bad): {n} kernels with "
                 f"-dbg, about {steps} judged between the endpoints",
                 f"each: its kernel fetched unless cached, then {each}"]
        if rng.unjudgeable:
            abis = ", ".join(k.abi for k in rng.unjudgeable)
            lines.append(f"not judgeable (no -dbg in the archive): {abis}")
    else:
        assert req.source is not None and req.good is not None and req.bad is not None
        p = plan_git(req.source, req.good, req.bad)
        lines = [f"{req.source}: {req.good} (good, {p.good[:12]}) .. {req.bad} (bad, {p.bad[:12]}): "
                 f"{p.revisions} commit{'s' if p.revisions > 1 else ''}, about {p.steps} judged between "
                 f"the endpoints",
                 f"each: a build (make -j{req.jobs}, in a scratch worktree under the cache), then {each}"]
    if req.replay is not None:
        n = len(replay)
        lines.append(f"replay: {n} revision{'s' if n != 1 else ''} logged in {req.replay}, not run again")
    lines.append(f"bisect log: {req.log_path} (a dry run writes nothing)")
    return lines


def _debian_range(req: BisectRequest, offline: bool = False) -> DebianRange:
    assert req.debian is not None
    good, bad = parse_range(req.debian)
    cat = Catalog.load()
    ends = []
    for name in (good, bad):
        try:
            ends.append(cat.lookup(name))
        except UsageError:
            pass  # a package version (6.1.170-3): select_range finds it, or says it is unknown
    flavours = {e.flavour for e in ends} or {DEFAULT_FLAVOUR}
    if len(flavours) != 1:
        raise UsageError(f"--debian {req.debian}: the endpoints are of different flavours "
                         f"({', '.join(sorted(flavours))})")
    kernels = available(cache_dir(create=not offline), flavours.pop(), offline=offline)
    aliases = {e.id: resolve(e, kernels).release for e in ends}
    return select_range(kernels, good, bad, aliases)


def _debian(req: BisectRequest, policy: Policy, replay: dict[str, list[str]] | None,
            run_one: Callable[[str, Path], str], say: Say) -> tuple[list[str], int]:
    rng = _debian_range(req)
    say(f"{len(rng.judged)} Debian kernels with -dbg from {rng.judged[0].label} to {rng.judged[-1].label}")
    if rng.unjudgeable:
        say(f"not judgeable (no -dbg in the archive): {', '.join(k.abi for k in rng.unjudgeable)}")
    say(f"bisect log: {req.log_path}")
    art = req.base.artifacts
    step = debian_step(lambda k, i: run_one(k.release, art / k.abi / f"run-{i + 1}"), runs=req.runs, say=say)
    res = run_debian_bisect(rng, step, log_path=req.log_path, replay=replay, policy=policy, say=say)
    return debian_report(res, req.scenario_arg or req.base.scenario.name, req.log_path)
