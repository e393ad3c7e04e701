"""``pokelab repro --trigger FILE|DIR``: the user's own trigger, run from vCPU 0 under the probe.

The trigger is what patches the kernel (it enables and disables a tracer, a
kprobe, an event, ...); pokelab's default load (``loadgen getpid``) runs pinned on
vCPUs 1.. and the probe judges every int3 emulation, wherever it is.  The trigger is
copied in over SSH (as ``--workload`` is) and run ``--repeat`` times (default 1):

* a file (a script with its ``#!`` line, or a static binary) is run as it is;
  its exit status is recorded;
* a ``.tc`` file, or a directory of them (found recursively, run in name order),
  is run by ``data/tc_runner.sh``, a small runner compatible with the kernel's
  ``tools/testing/selftests/ftrace/ftracetest`` for simple tests: each ``.tc`` is
  sourced by ``sh`` in the tracefs dir with ``set -e`` after ``initialize_ftrace``
  and ftracetest's helpers (``exit_pass``, ``exit_fail``, ``exit_unsupported``,
  ``exit_unresolved``, ``exit_untested``, ``exit_xfail``, ``fail``, ``clear_trace``,
  ...), and its ``# requires:`` lines are checked; each result is recorded.

``--function NAME`` names the function whose fentry site is read back at the end
(recorded in ``final_site``) and whose site's traps count toward the floor
(``--min-judged N``, default 1); without it every judged trap counts.

A trigger that did not do what it was written to (exit status not 0, a ``.tc``
that FAILed, was UNRESOLVED or timed out) makes the run INCONCLUSIVE with its
name: what it was meant to exercise is unknown.  ``.tc`` results UNSUPPORTED,
UNTESTED and XFAIL are recorded, not held against the run.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..machine.vm import Vm
from .scenario import TRACING, FinalState, Scenario, Step, parse_requirement

GUEST_DIR = "/tmp/pokelab-trigger"
RUNNER_GUEST = "/tmp/pokelab-tc-runner.sh"
#: each run of the trigger (all its .tc files) must end within this, s (TCG is slow)
TIMEOUT_S = 600.0
#: each .tc file must end within this, s
TC_TIMEOUT_S = 120
#: the most .tc files a directory trigger may hold (each is copied in and run)
MAX_TC_FILES = 200
#: .tc results that do not hold against the run (ftracetest does not fail on them either)
TC_OK = ("PASS", "UNSUPPORTED", "UNTESTED", "XFAIL")


@dataclass(frozen=True)
class Trigger:
    """What ``--trigger`` names: ``files`` relative to ``root`` (a dir) or the one file."""

    path: Path
    #: (host file, guest path) in run order
    files: tuple[tuple[Path, str], ...]
    tc: bool

    @property
    def name(self) -> str:
        return self.path.name


def _guest_name(rel: Path) -> str:
    return "/".join(re.sub(r"[^A-Za-z0-9._+-]", "_", part) for part in rel.parts)


def load(path: Path) -> Trigger:
    """The trigger at ``path``: a file, or a directory with ``.tc`` files.  UsageError if neither."""
    if path.is_dir():
        tcs = sorted(Path(d, f) for d, _dirs, files in os.walk(path) for f in files
                     if f.endswith(".tc") and Path(d, f).is_file())
        if not tcs:
            raise UsageError(f"--trigger {path}: a directory with no .tc files")
        if len(tcs) > MAX_TC_FILES:
            raise UsageError(f"--trigger {path}: {len(tcs)} .tc files, more than {MAX_TC_FILES}")
        return Trigger(path, tuple((p, f"{GUEST_DIR}/{_guest_name(p.relative_to(path))}") for p in tcs), True)
    if not path.is_file():
        raise UsageError(f"--trigger {path}: no such file or directory")
    return Trigger(path, ((path, f"{GUEST_DIR}/{_guest_name(Path(path.name))}"),), path.suffix == ".tc")


def parse_tc_results(output: str) -> list[dict[str, Any]]:
    """``POKELAB-TC <result> <exit> <file>`` lines of tc_runner.sh -> [{test, result, exit}].  Pure."""
    return [{"test": m.group(3).removeprefix(GUEST_DIR + "/"), "result": m.group(1), "exit": int(m.group(2))}
            for m in re.finditer(r"^POKELAB-TC (\S+) (\d+) (\S+)\s*$", output, re.M)]


def problems(results: list[dict[str, Any]], expected: int) -> list[str]:
    """Why one run of a .tc trigger cannot vouch for what it exercised ([] if it can).  Pure."""
    out = [f"{r['test']}: {r['result']} (exit {r['exit']})" for r in results if r["result"] not in TC_OK]
    if len(results) < expected:
        out.append(f"{expected - len(results)} of {expected} .tc file(s) reported no result")
    return out


class TriggerRun:
    """The trigger's steps for a scenario; ``results`` fills in as it runs (the verdict's ``trigger``)."""

    def __init__(self, trigger: Trigger) -> None:
        self.trigger = trigger
        self.results: dict[str, Any] = {"path": str(trigger.path), "kind": "tc" if trigger.tc else "file",
                                        "files": [g.removeprefix(GUEST_DIR + "/") for _h, g in trigger.files],
                                        "runs": []}

    def copy_in(self, vm: Vm) -> str:
        dirs = sorted({g.rsplit("/", 1)[0] for _h, g in self.trigger.files})
        vm.check(f"rm -rf {GUEST_DIR} && mkdir -p " + " ".join(map(shlex.quote, dirs)))
        for host, guest in self.trigger.files:
            vm.ssh.put_file(host, guest)
        if self.trigger.tc:
            runner = resources.files("orchestrator.run").joinpath("data/tc_runner.sh").read_bytes()
            vm.ssh.put(runner, RUNNER_GUEST, mode=0o755)
        return ""

    def command(self) -> str:
        guests = [g for _h, g in self.trigger.files]
        if self.trigger.tc:
            return shlex.join(["sh", RUNNER_GUEST, TRACING, str(TC_TIMEOUT_S), *guests])
        return f"chmod +x {shlex.quote(guests[0])} && {shlex.quote(guests[0])}"

    def run(self, vm: Vm) -> str:
        res = vm.run(f"taskset -c 0 sh -c {shlex.quote(self.command())}", TIMEOUT_S)
        n = len(self.results["runs"]) + 1
        entry: dict[str, Any] = {"run": n, "exit": res.status}
        if self.trigger.tc:
            entry["tests"] = parse_tc_results(res.stdout)
            why = problems(entry["tests"], len(self.trigger.files))
            if res.status != 0:
                why.append(f"the .tc runner exited {res.status}: {(res.stderr or res.stdout).strip()[-160:]}")
        else:
            entry["output_tail"] = (res.stdout + res.stderr).strip()[-400:]
            why = [] if res.status == 0 else [f"exited {res.status}: {entry['output_tail'][-160:]}"]
        self.results["runs"].append(entry)
        if not why:
            return ""
        return (f"the trigger {self.trigger.name} did not run as written (run {n}: {'; '.join(why)}); "
                f"what it exercised is unknown")


def scenario(run: TriggerRun, *, function: str | None, min_judged: int = 1, repeat: int = 1) -> Scenario:
    """The scenario a trigger stands for: copy it in, run it ``repeat`` times, read back ``function``.

    UsageError if ``function`` is not a plain symbol name or ``min_judged`` < 1.
    """
    if function is not None:
        try:
            parse_requirement(f"symbol:{function}")
        except ValueError:
            raise UsageError(f"--function {function!r}: not a symbol name") from None
    if min_judged < 1:
        raise UsageError("--min-judged must be at least 1 (0 traps prove nothing)")
    name = re.sub(r"[^a-z0-9-]+", "-", run.trigger.name.lower()).strip("-") or "trigger"
    return Scenario(
        name=f"trigger-{name}",
        description=f"the user's trigger {run.trigger.name} from vCPU 0 under the default load",
        requires=(f"symbol:{function}",) if function else (),
        setup=(Step("copy-trigger", run.copy_in),),
        steps=(Step("trigger", run.run),),
        final_state=FinalState(site="any" if function else None),
        min_traps=min_judged,
        function=function,
        repeat=repeat)
