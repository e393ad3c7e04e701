"""Drive ``git bisect`` over a kernel tree: build, boot, run a scenario N times, decide, tell git.

The bisect runs in a scratch worktree (``git worktree add --detach`` under the
cache), so the user's checkout, index and bisect state are never touched; the
worktree is removed at the end.  The per-revision work is a *step* passed in
(``Step``: revision + worktree -> run outcomes), so the driver is testable on a
tiny git history without kernels; :func:`bisect_logic.decide` turns the
outcomes into good/bad/skip/abort.

Every judged revision is appended to a JSON-lines log (revision, outcomes,
decision, reason); ``replay`` takes such a log and reuses its outcomes instead
of running those revisions again.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.bisect_logic import Decision, LinearBisect, Policy, Verdict, culprit_confidence, decide
from ..core.errors import InfraError, UsageError
from ..host import procs
from ..host.cache import path_key
from ..kernels.debian import DebianKernel, DebianRange
from ..kernels.images import exclusive_lock

log = logging.getLogger(__name__)

#: one revision's work: (full sha, worktree checked out at it) -> run outcomes (bisect_logic.OUTCOMES)
Step = Callable[[str, Path], list[str]]

GIT_TIMEOUT_S = 600.0
_FIRST_BAD = re.compile(r"^([0-9a-f]{40}) is the first bad commit", re.M)
_ONLY_SKIPPED = "only 'skip'ped commits left"
_DEFAULT_POLICY = Policy()


class BisectError(UsageError):
    """An endpoint that does not hold, a bad revision (exit 2)."""

    blame = "usage"


class BisectAborted(InfraError):
    """Infrastructure errors outnumbered the verdicts at some revision: the bisect cannot be trusted."""


@dataclass
class BisectResult:
    culprit: str | None  # full sha of the first bad commit (None: only skipped commits left)
    candidates: list[str]  # with culprit None: the commits it could be
    confidence: float | None
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # every judged revision, endpoints included
    steps_run: int = 0  # revisions actually run (not replayed)


def _git(repo: Path, *args: str, check: bool = True, timeout: float = GIT_TIMEOUT_S) -> tuple[int, str]:
    res = procs.run(["git", "-C", str(repo), *args], timeout=timeout, what=f"git {args[0]}", check=check)
    return res.returncode, (res.stdout + res.stderr).decode(errors="replace")


def resolve(repo: Path, rev: str) -> str:
    rc, out = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if rc != 0:
        raise BisectError(f"{rev!r} is not a commit in {repo}")
    return out.strip().splitlines()[0]


@dataclass(frozen=True)
class GitPlan:
    """What a git bisect of ``good..bad`` would do, read from the repository alone (nothing written).

    ``revisions``: commits in ``bad`` not in ``good`` (``git rev-list --count``); ``steps``: about how
    many revisions between the two endpoints will be judged (the first one git checks out plus its
    ``bisect_steps`` estimate from ``git rev-list --bisect-vars``; 0 when ``bad`` is the only commit).
    """

    good: str  # full shas
    bad: str
    revisions: int
    steps: int


def plan_git(repo: Path, good: str, bad: str) -> GitPlan:
    """The plan of bisecting ``good..bad`` in ``repo``; BisectError for a revision that is not a
    commit or a ``good`` that is not an ancestor of ``bad`` (as :func:`run_bisect` would say)."""
    good_sha, bad_sha = check_range(repo, good, bad)
    _, count = _git(repo, "rev-list", "--count", f"{good_sha}..{bad_sha}")
    revisions = int(count.split()[0])
    # git's "roughly N steps" after the revision it checks out first
    _, bisect_vars = _git(repo, "rev-list", "--bisect-vars", bad_sha, f"^{good_sha}")
    steps = re.search(r"^bisect_steps=(\d+)", bisect_vars, re.M)
    return GitPlan(good_sha, bad_sha, revisions, int(steps.group(1)) + 1 if steps and revisions > 1 else 0)


def check_range(repo: Path, good: str, bad: str) -> tuple[str, str]:
    """(good, bad) as full shas; BisectError unless both are commits and good is a proper ancestor of bad."""
    good_sha, bad_sha = resolve(repo, good), resolve(repo, bad)
    if good_sha == bad_sha:
        raise BisectError(f"good {good} and bad {bad} are the same commit ({good_sha[:12]})")
    rc, _ = _git(repo, "merge-base", "--is-ancestor", good_sha, bad_sha, check=False)
    if rc != 0:
        raise BisectError(f"good {good} is not an ancestor of bad {bad}")
    return good_sha, bad_sha


def read_log(path: Path) -> dict[str, list[str]]:
    """Outcomes per revision from a bisect log (later lines win)."""
    if not path.is_file():
        raise UsageError(f"--replay {path}: no such file")
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"--replay {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--replay {path}: a binary file, not a bisect log") from None
    got: dict[str, list[str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            got[str(rec["revision"])] = [str(o) for o in rec["outcomes"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--replay {path}:{n}: not a bisect log line ({exc})") from None
    return got


class _Worktree:
    """A detached scratch worktree of ``repo`` at ``path``; removed (and pruned) on exit."""

    def __init__(self, repo: Path, path: Path, rev: str) -> None:
        self.repo, self.path, self.rev = repo, path, rev

    def __enter__(self) -> Path:
        if self.path.exists():  # a leftover of an interrupted bisect
            _git(self.repo, "worktree", "remove", "--force", str(self.path), check=False)
            shutil.rmtree(self.path, ignore_errors=True)
            _git(self.repo, "worktree", "prune", check=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _git(self.repo, "worktree", "add", "--detach", str(self.path), self.rev)
        return self.path

    def __exit__(self, *exc: object) -> None:
        _git(self.path, "bisect", "reset", check=False)
        _git(self.repo, "worktree", "remove", "--force", str(self.path), check=False)
        shutil.rmtree(self.path, ignore_errors=True)
        _git(self.repo, "worktree", "prune", check=False)


class _Judge:
    """Judges revisions: from the replayed log, else by running the step; appends to the log."""

    def __init__(self, log_path: Path, replay: dict[str, list[str]] | None, policy: Policy,
                 say: Callable[[str], None]) -> None:
        self.log_path, self.replay, self.policy, self.say = log_path, dict(replay or {}), policy, say
        self.verdicts: dict[str, Verdict] = {}
        self.steps_run = 0
        log_path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, key: str, label: str, run: Callable[[], list[str]]) -> Verdict:
        logged = decide(self.replay[key], self.policy) if key in self.replay else None
        if logged is not None and logged.decision is not Decision.ABORT:
            v = logged
            self.say(f"{label}: {v.decision.value} ({v.reason}) [from the log]")
        else:  # not logged, or logged as aborted on a host problem: that is what a resume retries
            started = time.monotonic()
            outcomes = run()
            self.steps_run += 1
            v = decide(outcomes, self.policy)
            rec = {"revision": key, "outcomes": list(outcomes), "decision": v.decision.value,
                   "reason": v.reason, "seconds": round(time.monotonic() - started, 1)}
            with self.log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            self.say(f"{label}: {v.decision.value} ({v.reason})")
        self.verdicts[key] = v
        return v

    @property
    def confidence(self) -> float | None:
        return culprit_confidence(list(self.verdicts.values()))


def worktree_path(work: Path, repo: Path) -> Path:
    """The scratch worktree of ``repo`` (its ``.lock`` sibling guards it)."""
    return work / ("wt-" + path_key(repo.resolve()))


def run_bisect(repo: Path, good: str, bad: str, step: Step, *, work: Path, log_path: Path,
               replay: dict[str, list[str]] | None = None, policy: Policy = _DEFAULT_POLICY,
               say: Callable[[str], None] = log.info) -> BisectResult:
    """Bisect ``good..bad`` of ``repo`` with ``step`` judging each revision.

    One bisect per source repo at a time: a second one fails at once (they would
    share the scratch worktree and the incremental build directory).
    """
    repo = repo.resolve()
    if not (repo / ".git").exists():
        raise UsageError(f"--source {repo} is not a git checkout")
    good_sha, bad_sha = check_range(repo, good, bad)
    say(f"bisect log: {log_path}")  # once the input holds: an error above is the only line
    judge_one = _Judge(log_path, replay, policy, say)

    def judge(sha: str, wt: Path) -> Verdict:
        return judge_one(sha, sha[:12], lambda: step(sha, wt))

    # one stable path per source repo: kbuild keys its scratch copy and O= dir on the source path,
    # so the next bisect of the same repo builds incrementally
    wt_path = worktree_path(work, repo)
    with exclusive_lock(wt_path.with_name(wt_path.name + ".lock"), f"a bisect of {repo}", BisectError), \
            _Worktree(repo, wt_path, good_sha) as wt:
        # both endpoints first: the bisect means nothing unless they hold
        for sha, want, name in ((good_sha, Decision.GOOD, "good"), (bad_sha, Decision.BAD, "bad")):
            _git(wt, "checkout", "--quiet", "--detach", sha)
            v = judge(sha, wt)
            if v.decision is Decision.ABORT:
                raise BisectAborted(f"bisect aborted at the {name} endpoint {sha[:12]}: {v.reason} "
                                    f"(log: {log_path})")
            if v.decision is not want:
                raise BisectError(f"the {name} endpoint {sha[:12]} came out {v.decision.value}: {v.reason}")
        _, out = _git(wt, "bisect", "start", bad_sha, good_sha)
        while True:
            m = _FIRST_BAD.search(out)
            if m:
                culprit = m.group(1)
                return BisectResult(culprit, [culprit], judge_one.confidence, judge_one.verdicts,
                                    steps_run=judge_one.steps_run)
            if _ONLY_SKIPPED in out:
                cands = re.findall(r"^([0-9a-f]{40})$", out, re.M)
                return BisectResult(None, cands, judge_one.confidence, judge_one.verdicts,
                                    steps_run=judge_one.steps_run)
            _, head = _git(wt, "rev-parse", "HEAD")
            sha = head.strip()
            v = judge(sha, wt)
            if v.decision is Decision.ABORT:
                raise BisectAborted(f"bisect aborted at {sha[:12]}: {v.reason} (log: {log_path})")
            rc, out = _git(wt, "bisect", v.decision.value, check=False)
            if rc != 0 and not (_FIRST_BAD.search(out) or _ONLY_SKIPPED in out):
                raise BisectError(f"git bisect {v.decision.value} failed at {sha[:12]}: "
                                  f"{out.strip().splitlines()[-1] if out.strip() else rc}")


@dataclass
class DebianBisectResult:
    culprit: DebianKernel | None  # the oldest bad version (None: skipped versions left in the gap)
    candidates: list[DebianKernel]  # where the first bad version can be, oldest first
    last_good: DebianKernel
    unjudged: list[DebianKernel]  # between last_good and the culprit, no -dbg: not judged
    confidence: float | None
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    steps_run: int = 0
    not_monotone: list[DebianKernel] = field(default_factory=list)  # judged good after a bad one


def run_debian_bisect(rng: DebianRange, step: Callable[[DebianKernel], list[str]], *, log_path: Path,
                      replay: dict[str, list[str]] | None = None, policy: Policy = _DEFAULT_POLICY,
                      say: Callable[[str], None] = log.info) -> DebianBisectResult:
    """Bisect Debian's prebuilt kernels ``rng.judged`` (oldest good, newest bad); logged by release."""
    seq = rng.judged
    judge_one = _Judge(log_path, replay, policy, say)
    state = LinearBisect(len(seq))

    def judge(i: int) -> Verdict:
        k = seq[i]
        v = judge_one(k.release, k.label, lambda: step(k))
        if v.decision is Decision.ABORT:
            raise BisectAborted(f"bisect aborted at {k.release}: {v.reason} (log: {log_path})")
        return v

    for end, want, name in ((0, Decision.GOOD, "good"), (len(seq) - 1, Decision.BAD, "bad")):
        v = judge(end)
        if v.decision is not want:
            raise BisectError(f"the {name} endpoint {seq[end].release} came out {v.decision.value}: "
                              f"{v.reason}")
        state.record(end, v.decision)
    while (i := state.next()) is not None:
        lo, hi = state.gap()
        left = sum(1 for j in range(lo + 1, hi) if j not in state.decisions)
        say(f"{left} untried versions between {seq[lo].release} and {seq[hi].release}: "
            f"trying {seq[i].release}")
        state.record(i, judge(i).decision)
    lo, hi = state.gap()
    cands = [seq[j] for j in state.candidates]
    return DebianBisectResult(
        culprit=seq[hi] if len(cands) == 1 else None, candidates=cands, last_good=seq[lo],
        unjudged=rng.between(seq[lo], seq[hi]), confidence=judge_one.confidence,
        verdicts=judge_one.verdicts, steps_run=judge_one.steps_run,
        not_monotone=[seq[j] for j, d in sorted(state.decisions.items()) if d is Decision.GOOD and j > hi])


def debian_report(res: DebianBisectResult, scenario: str, log_path: Path) -> tuple[list[str], int]:
    """What ``pokelab bisect --debian`` prints, and its exit status (0: one culprit, 1: candidates)."""
    conf = "unknown" if res.confidence is None else f"{res.confidence:.3f}"
    sure = res.culprit is not None and not res.unjudged
    lines: list[str] = []
    if sure and res.culprit is not None:
        lines.append(f"{res.culprit.label} is the first bad version")
    else:
        lines.append("the first bad version is one of (oldest first):")
        for k in res.unjudged + res.candidates[:-1]:
            why = "not judged: no -dbg" if k in res.unjudged else "skipped"
            lines.append(f"  {k.label}  [{why}]")
        lines.append(f"  {res.candidates[-1].label}  [the oldest bad one judged]")
    first_bad = res.candidates[-1]
    lines.append(f"  last good: {res.last_good.label}")
    lines.append(f"  upstream: {res.last_good.upstream}..{first_bad.upstream} (or a Debian patch); "
                 f"go on with `pokelab bisect --source <linux-stable> --good {res.last_good.upstream} "
                 f"--bad {first_bad.upstream} --scenario {scenario}`")
    for k in res.not_monotone:
        lines.append(f"  warning: {k.label} came out good although it is newer than a bad one "
                     "(a flaky failure, or a fix that was reverted)")
    lines.append(f"confidence {conf} over {len(res.verdicts)} judged versions, {res.steps_run} run now "
                 f"(log: {log_path})")
    return lines, 0 if sure else 1


def commit_line(repo: Path, sha: str) -> str:
    _, out = _git(repo, "log", "-1", "--format=%h %s", sha)
    return out.strip()


def _runs(label: str, runs: int, run_one: Callable[[int], str], say: Callable[[str], None]) -> list[str]:
    """``runs`` scenario runs; a pokelab error is a BOOT_FAIL or INFRA outcome, not an exception."""
    from ..core.bisect_logic import INFRA, OUTCOMES
    from ..core.errors import PokelabError
    from ..core.verdict import verdict_for

    outcomes: list[str] = []
    for i in range(runs):
        try:
            verdict = run_one(i)
        except PokelabError as exc:
            say(f"{label}: run {i + 1}: {type(exc).__name__}: {exc.title}")
            verdict = verdict_for(exc)  # not an outcome (USAGE, ...): INFRA below
        outcomes.append(verdict if verdict in OUTCOMES else INFRA)
        say(f"{label}: run {i + 1}/{runs}: {outcomes[-1]}")
    return outcomes


def kernel_step(run_one: Callable[[str, int, Any], str], *, jobs: int, runs: int,
                say: Callable[[str], None] = log.info) -> Step:
    """The real step: build the worktree with kbuild (failure: BUILD_FAIL), then ``runs`` runs.

    ``run_one(sha, i, build_result)`` boots the built kernel and runs the scenario once, giving
    its verdict; a verdict outside bisect_logic's outcomes counts as INFRA.
    """
    from ..core.bisect_logic import BUILD_FAIL
    from ..kernels.kbuild import BuildError, build_kernel

    def step(sha: str, wt: Path) -> list[str]:
        say(f"{sha[:12]}: building")
        try:
            res = build_kernel(wt, (), (), None, jobs=jobs, say=say)
        except BuildError as exc:
            say(f"{sha[:12]}: build failed: {exc.title}")
            return [BUILD_FAIL]
        say(f"{sha[:12]}: {res.kernel_id} built in {res.seconds:.0f} s")
        return _runs(sha[:12], runs, lambda i: run_one(sha, i, res), say)

    return step


def debian_step(run_one: Callable[[DebianKernel, int], str], *, runs: int,
                say: Callable[[str], None] = log.info) -> Callable[[DebianKernel], list[str]]:
    """The step over prebuilt packages: fetch (cached), then ``runs`` runs; no build.

    A kernel whose packages cannot be fetched or prepared gives INFRA outcomes: with
    infrastructure errors in every run the bisect aborts rather than guessing.
    """
    from ..core.bisect_logic import INFRA
    from ..core.errors import PokelabError
    from ..host.cache import cache_dir
    from ..kernels.images import ensure_kernel

    def step(k: DebianKernel) -> list[str]:
        say(f"{k.release}: fetching {k.image_pkg} and its -dbg (cached after the first time)")
        try:
            ensure_kernel(k.spec(), cache_dir())
        except PokelabError as exc:
            say(f"{k.release}: cannot prepare it: {exc.title}")
            return [INFRA] * runs
        return _runs(k.release, runs, lambda i: run_one(k, i), say)

    return step
