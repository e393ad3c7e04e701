"""The commands: each builds its typed request from argv, calls a job, prints its lines.

:func:`handler` gives what runs ``pokelab <command>`` (the app asks after parsing, so a
usage error never loads the jobs).  Jobs (:mod:`orchestrator.jobs`) hold the logic and
return what to print; a command returns the exit status; errors propagate to the app.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from argparse import Namespace
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ..core.ktap import from_nightly
from ..core.verdict import exit_status
from ..jobs import bench, bisect_run, guest, kernels, nightly_run, repro
from ..run.execute import Executor
from ..run.prepare import default_artifacts
from ..run.probe_run import gdb_hold
from ..run.request import KernelChoice, RunRequest, VmOptions
from ..run.scenario_file import resolve
from ..run.scenarios_table import BY_NAME

Command = Callable[[Namespace], int]
T = TypeVar("T")


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


def _from(cls: Callable[..., T], a: Namespace, **given: Any) -> T:
    """``cls`` (a typed request) from the options ``parser.fields`` made of its fields, and ``given``."""
    names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("cli")}  # type: ignore[arg-type]
    return cls(**{n: getattr(a, n) for n in names if hasattr(a, n)}, **given)


def _artifacts(a: Namespace, label: str) -> Path:
    return a.artifacts.resolve() if a.artifacts else default_artifacts(label)


def _guest(a: Namespace, label: str) -> tuple[KernelChoice, VmOptions, Path]:
    """The kernel, VM and artifact dir of a command that boots a guest."""
    return _from(KernelChoice, a), _from(VmOptions, a), _artifacts(a, label)


#: the commands that print the lines their job returns, and nothing else
LISTINGS: dict[str, Callable[[Namespace], Iterable[str]]] = {
    "kernels": lambda a: kernels.remove_lines(a.remove, debian=a.debian) if a.remove else
    kernels.list_lines(a.debian),
    "images": lambda a: kernels.fetch_images(a.kernel),
    "build-kernel": lambda a: [kernels.build(_from(kernels.BuildRequest, a), say)],
    "qemu": lambda a: [guest.ensure_qemu(a.jobs, progress=say)],
    "scenarios": lambda a: repro.scenario_lines(),
    "bench": lambda a: [json.dumps(bench.run_request(_from(bench.BenchRequest, a), say), indent=2)],
}


def handler(command: str) -> Command:
    """What runs ``pokelab <command>``: its :data:`LISTINGS` entry, printed, or ``cmd_<command>``."""
    if command in LISTINGS:
        return lambda a: _show(LISTINGS[command](a))
    return globals()["cmd_" + command.replace("-", "_")]  # type: ignore[no-any-return]


def cmd_boot(a: Namespace) -> int:
    if a.dry_run:
        return _show([guest.dry_run_line(*_guest(a, "boot"))])
    guest.boot(*_guest(a, "boot"), keep=a.keep, emit=functools.partial(print, flush=True))
    return 0


def cmd_run_cmd(a: Namespace) -> int:
    command = guest.command_line(a.words, a.timeout)
    if a.dry_run:
        return _show([guest.dry_run_line(*_guest(a, "run-cmd"))])
    res = guest.run_command(*_guest(a, "run-cmd"), command, a.timeout)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    return res.status


def _repro(a: Namespace, choice: repro.Choice, opts: repro.ReproOptions) -> int:
    """Run a scenario (``repro``, ``probe``): the request, the job, the verdict lines."""
    kernel, vm, artifacts = _guest(a, f"{a.command}-{choice.scenario.name}")
    request = _from(RunRequest, a, scenario=choice.scenario, artifacts=artifacts, kernel=kernel, vm=vm,
                    info=choice.info)
    request.check()
    if a.dry_run:
        return _show([repro.dry_run_line(kernel, vm, artifacts, opts.format)])
    hold = gdb_hold(functools.partial(print, flush=True)) if opts.gdb else None
    rep = repro.run(request, Executor(progress=say, hold=hold), runs=opts.runs, until_fail=opts.until_fail,
                    say=say)
    if opts.json is not None:
        rep.final.write(opts.json)
    _show(repro.report_lines(rep), opts.format, lambda: repro.ktap_text(rep.final))
    if rep.stopped is not None:
        say(f"interrupted by {rep.stopped[0]}: verdict written to {artifacts / 'verdict.json'}")
        return rep.stopped[1]
    return exit_status(rep.final.verdict, bisect=opts.bisect_exit_codes)


def cmd_probe(a: Namespace) -> int:
    return _repro(a, repro.Choice(repro.probe_scenario(a.toggles, a.function, a.min_judged)),
                  _from(repro.ReproOptions, a))


def cmd_repro(a: Namespace) -> int:
    opts = _from(repro.ReproOptions, a)
    return _repro(a, repro.choose(a.scenario, opts, BY_NAME.get), opts)


def _reports(a: Namespace) -> nightly_run.Reports:
    return _from(nightly_run.Reports, a, out_dir=a.out)


def _night_done(summary: dict[str, Any], out_dir: Path, fmt: str) -> int:
    lines, code = nightly_run.report_lines(summary, out_dir)
    _show(lines, fmt, lambda: from_nightly(summary))
    return code


def cmd_nightly(a: Namespace) -> int:
    req = _from(nightly_run.NightlyRequest, a, reports=_reports(a), vm=_from(VmOptions, a))
    plan, _context = nightly_run.plan(req, a.dry_run), nightly_run.context(req.reports)  # bad: usage
    if a.dry_run:
        return _show(nightly_run.dry_run_lines(plan, a.format, say))
    return _night_done(nightly_run.run(req, plan, Executor(), progress=say), a.out.resolve(), a.format)


def cmd_merge(a: Namespace) -> int:
    return _night_done(nightly_run.merge_shards(_reports(a), a.summaries), a.out.resolve(), a.format)


def cmd_bisect(a: Namespace) -> int:
    base = RunRequest(resolve(a.scenario, BY_NAME.get), _artifacts(a, "bisect"), vm=_from(VmOptions, a))
    req = _from(bisect_run.BisectRequest, a, base=base, scenario_arg=a.scenario)
    lines, code = bisect_run.run(req, Executor(), say, dry_run=a.dry_run)
    _show(["\n".join(lines)])
    return code
