"""The commands: each builds its typed request from argv, calls a job, prints its lines.

:func:`handler` gives what runs ``pokelab <command>`` (the app asks after parsing, so a
usage error never loads the jobs).  Jobs (:mod:`orchestrator.jobs`) hold the logic and
return what to print; a command returns the exit status; errors propagate to the app.
"""

from __future__ import annotations

import functools
import json
import sys
from argparse import Namespace
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..core.ktap import from_nightly
from ..core.verdict import exit_status
from ..jobs import bench, bisect_run, guest, kernels, nightly_run, repro
from ..machine.qemu_binary import check_given
from ..run.execute import Executor
from ..run.prepare import default_artifacts
from ..run.probe_run import gdb_hold
from ..run.request import KernelChoice, RunRequest, VmOptions
from ..run.scenario_file import resolve
from ..run.scenarios_table import BY_NAME

Command = Callable[[Namespace], int]


def say(msg: str) -> None:
    print(f"pokelab: {msg}", file=sys.stderr, flush=True)


def _show(lines: Iterable[str], fmt: str = "text", ktap: Callable[[], str] | None = None) -> int:
    """Print ``lines``; ``--format ktap``: stdout is the KTAP document alone, the lines go to stderr."""
    emit = print if fmt == "text" else functools.partial(print, file=sys.stderr)
    for line in lines:
        emit(line)
    if fmt == "ktap" and ktap is not None:
        print(ktap(), end="")
    return 0


def _vm(a: Namespace) -> VmOptions:
    return VmOptions(a.smp, a.memory, a.accel, a.tcg_thread, a.machine, getattr(a, "gdb_port", None),
                     getattr(a, "ssh_port", None), a.qemu)


def _artifacts(a: Namespace, label: str) -> Path:
    return a.artifacts.resolve() if a.artifacts else default_artifacts(label)


def _guest(a: Namespace, label: str) -> tuple[KernelChoice, VmOptions, Path]:
    """The kernel, VM and artifact dir of a command that boots a guest."""
    return KernelChoice(a.kernel, a.bzimage, a.vmlinux, a.modules), _vm(a), _artifacts(a, label)


#: the commands that print the lines their job returns, and nothing else
LISTINGS: dict[str, Callable[[Namespace], Iterable[str]]] = {
    "kernels": lambda a: kernels.remove_lines(a.remove) if a.remove else kernels.list_lines(a.debian),
    "images": lambda a: kernels.fetch_images(a.kernel),
    "build-kernel": lambda a: [kernels.build(a.source, a.patches, a.config_fragment, a.out, a.jobs, say)],
    "qemu": lambda a: [guest.ensure_qemu(a.jobs, progress=say)],
    "scenarios": lambda a: repro.scenario_lines(),
}


def handler(command: str) -> Command:
    """What runs ``pokelab <command>``: its :data:`LISTINGS` entry, printed, or ``cmd_<command>``."""
    if command in LISTINGS:
        return lambda a: _show(LISTINGS[command](a))
    found: Command = globals()["cmd_" + command.replace("-", "_")]
    return found


def cmd_boot(a: Namespace) -> int:
    if a.dry_run:
        return _show([guest.dry_run_line(*_guest(a, "boot"))])
    guest.boot(*_guest(a, "boot"), keep=a.keep, emit=functools.partial(print, flush=True))
    return 0


def cmd_run_cmd(a: Namespace) -> int:
    command = guest.command_line(a.words)
    if a.dry_run:
        return _show([guest.dry_run_line(*_guest(a, "run-cmd"))])
    res = guest.run_command(*_guest(a, "run-cmd"), command, a.timeout)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    return res.status


def _repro(a: Namespace, choice: repro.Choice, *, runs: int | None = None, until_fail: bool = False,
           fmt: str = "text", gdb: bool = False, bisect: bool = False) -> int:
    """Run a scenario (``repro``, ``probe``): the request, the job, the verdict lines."""
    kernel, vm, artifacts = _guest(a, f"{a.command}-{choice.scenario.name}")
    request = RunRequest(choice.scenario, artifacts, kernel, vm, inject=a.inject, inject_every=a.inject_every,
                         workload=getattr(a, "workload", None), info=choice.info)
    request.check()
    if a.dry_run:
        return _show([guest.dry_run_line(kernel, vm, artifacts)])
    hold = gdb_hold(functools.partial(print, flush=True)) if gdb else None
    rep = repro.run(request, Executor(progress=say, hold=hold), runs=runs, until_fail=until_fail, say=say)
    if a.json is not None:
        rep.final.write(a.json)
    _show(repro.report_lines(rep), fmt, lambda: repro.ktap_text(rep.final))
    if rep.stopped is not None:
        say(f"interrupted by {rep.stopped[0]}: verdict written to {artifacts / 'verdict.json'}")
        return rep.stopped[1]
    return exit_status(rep.final.verdict, bisect=bisect)


def cmd_probe(a: Namespace) -> int:
    return _repro(a, repro.Choice(repro.probe_scenario(a.toggles, a.function, a.min_judged)))


def cmd_repro(a: Namespace) -> int:
    repro.check_runs(a.repeat, a.runs, a.until_fail)
    choice = repro.choose(a.scenario, trigger_path=a.trigger, function=a.function, min_judged=a.min_judged,
                          repeat=a.repeat, builtin=BY_NAME.get)
    return _repro(a, choice, runs=a.runs, until_fail=a.until_fail, fmt=a.format, gdb=a.gdb,
                  bisect=a.bisect_exit_codes)


def cmd_bench(a: Namespace) -> int:
    figures = bench.run(a.out.resolve(), boots=a.boots, stops=a.stops, toggles=a.toggles, progress=say,
                        parts=tuple(dict.fromkeys(a.part or bench.PARTS)), jobs=a.jobs,
                        qemu=check_given(a.qemu) if a.qemu else None,
                        qemu_compare=check_given(a.qemu_compare) if a.qemu_compare else None)
    return _show([json.dumps(figures, indent=2)])


def _reports(a: Namespace) -> nightly_run.Reports:
    return nightly_run.Reports(a.out, a.previous, a.known_issues, a.kcidb, a.artifacts_url)


def _night_done(summary: dict[str, Any], out_dir: Path, fmt: str) -> int:
    lines, code = nightly_run.report_lines(summary, out_dir)
    _show(lines, fmt, lambda: from_nightly(summary))
    return code


def cmd_nightly(a: Namespace) -> int:
    req = nightly_run.NightlyRequest(_reports(a), _vm(a), a.kernels, a.scenarios, a.repeat, a.shard, a.jobs)
    plan = nightly_run.plan(req)
    if a.dry_run:
        return _show(["\n".join(f"{k} {s}" for k, s in plan.cells)])
    return _night_done(nightly_run.run(req, plan, Executor(), progress=say), a.out.resolve(), a.format)


def cmd_merge(a: Namespace) -> int:
    return _night_done(nightly_run.merge_shards(_reports(a), a.summaries), a.out.resolve(), a.format)


def cmd_bisect(a: Namespace) -> int:
    base = RunRequest(resolve(a.scenario, BY_NAME.get), _artifacts(a, "bisect"), KernelChoice(), _vm(a))
    req = bisect_run.BisectRequest(base, a.runs, a.source, a.good, a.bad, a.debian, a.log, a.replay, a.jobs,
                                   a.scenario)
    lines, code = bisect_run.run(req, Executor(), say)
    _show(["\n".join(lines)])
    return code
