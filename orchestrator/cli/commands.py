"""The commands: each builds its typed request from argv, calls a job, prints its lines.

Jobs (:mod:`orchestrator.jobs`) hold the logic and return what to print; a command
returns the exit status.  Errors propagate to :func:`.app.main`.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..core.verdict import exit_status


def say(msg: str) -> None:
    print(f"pokelab: {msg}", file=sys.stderr, flush=True)


def _emit(fmt: str) -> Callable[..., None]:
    """--format ktap: stdout is the KTAP document alone, the human lines go to stderr."""
    return print if fmt == "text" else functools.partial(print, file=sys.stderr)


def _vm(args: argparse.Namespace) -> Any:
    from ..run.request import VmOptions

    return VmOptions(args.smp, args.memory, args.accel, args.tcg_thread, args.machine,
                     getattr(args, "gdb_port", None), getattr(args, "ssh_port", None), args.qemu)


def _kernel(args: argparse.Namespace) -> Any:
    from ..run.request import KernelChoice

    return KernelChoice(args.kernel, args.bzimage, args.vmlinux, args.modules)


def _artifacts(args: argparse.Namespace, label: str) -> Path:
    from ..run.prepare import default_artifacts

    given = getattr(args, "artifacts", None)
    return given.resolve() if given else default_artifacts(label)


def _dry_run(kernel: Any, vm: Any, artifacts: Path) -> int:
    from ..run.prepare import dry_run_argv

    print(shlex.join(dry_run_argv(kernel, vm, artifacts)))
    return 0


def cmd_kernels(args: argparse.Namespace) -> int:
    from ..host.cache import cache_dir
    from ..kernels.catalog import Catalog
    from ..kernels.images import custom_registry, is_cached

    cat = Catalog.load()
    cache = cache_dir()
    if args.remove:
        return _remove_kernels(args.remove, cat, cache)
    if args.debian:
        from ..kernels.debian import available

        for d in available(cache, None, with_suites=True):
            flags = [d.version, ",".join(d.suites) or "?",
                     "with -dbg" if d.has_dbg else "no -dbg: not usable"]
            if d.has_dbg and is_cached(d.spec(), cache):
                flags.append("cached")
            print(f"{d.line:5} {d.flavour:11} {d.release:32} {', '.join(flags)}")
        return 0
    for k in cat.kernels:
        flags = [k.wants]
        if k.default:
            flags.append("default")
        spec = _resolved_offline(k, cache)
        flags.append(f"cached: {spec.release} ({spec.version})" if spec and is_cached(spec, cache)
                     else "not cached")
        print(f"{k.id:12} {', '.join(flags)}")
    for kid, entry in sorted(custom_registry(cache).items()):
        try:
            meta = json.loads((Path(entry["dir"]) / "meta.json").read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue  # removed by hand: not listed
        patches = ", ".join(Path(p).name for p in meta.get("patches", [])) or "no patches"
        print(f"{kid} {meta.get('release', '?')}  built from {meta.get('source', '?')} ({patches})")
    return 0


def _resolved_offline(request: Any, cache: Path) -> Any:
    """The kernel spec ``request`` last resolved to here (no archive asked), or None."""
    from ..kernels.debian import resolve_spec

    try:
        return resolve_spec(request, cache, offline=True)
    except UsageError:
        return None


def _remove_kernels(names: list[str], cat: Any, cache: Path) -> int:
    """``pokelab kernels --remove``: built kernels (``custom-*``, or ``built`` for all) and fetched ones."""
    from ..kernels import removal

    plan = removal.plan(names, cat, cache)
    total = 0
    for one in plan.removals:
        freed = removal.carry_out(one, cache)
        total += freed
        print(f"removed {one.name} ({freed / 1e6:.0f} MB)")
    print(f"freed {total / 1e6:.0f} MB; a removed Debian kernel is fetched again when next used")
    for kept in plan.kept:
        print(f"left {kept.size / 1e6:.0f} MB: {kept.what}")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from ..host.cache import cache_dir
    from ..kernels.catalog import Catalog
    from ..kernels.debian import resolve_spec
    from ..kernels.images import ensure_kernel
    from ..kernels.rootfs import ensure_initramfs, ensure_ssh_key

    cat = Catalog.load()
    wanted = list(cat.kernels) if args.kernel == ["all"] else [
        cat.lookup(k) for k in (args.kernel or [cat.default.id])]
    cache = cache_dir()
    key = ensure_ssh_key(cache)
    for request in wanted:
        k = ensure_kernel(resolve_spec(request, cache), cache)
        initrd = ensure_initramfs(k, cache, {})
        print(f"{request.id:10} {k.package} {k.version}  build-id {k.build_id[:16]}  initramfs {initrd.name}")
    print(f"ssh key    {key}")
    return 0


def _guest(args: argparse.Namespace, label: str) -> tuple[Any, Any]:
    from ..run.prepare import prepare_vm

    return prepare_vm(_kernel(args), _vm(args), artifacts=_artifacts(args, label))


def cmd_boot(args: argparse.Namespace) -> int:
    from ..machine.vm import Vm

    if args.dry_run:
        return _dry_run(_kernel(args), _vm(args), _artifacts(args, "boot"))
    spec, kernel = _guest(args, "boot")
    with Vm(spec) as vm:
        vm.start()
        release = vm.wait_ready()
        pkg = f" ({kernel.package} {kernel.version})" if kernel.package else ""
        print(f"booted {release}{pkg} in {vm.boot_seconds:.1f} s ({spec.accel}, {spec.smp} vCPUs); "
              f"artifacts in {spec.artifacts}")
        print(vm.connect_hint(kernel.vmlinux))
        if args.keep:
            print("the guest stays up until Ctrl-C", flush=True)
            done = threading.Event()
            while not done.wait(0.5):
                gone = vm.qemu_exited()
                if gone:
                    print(gone)
                    break
    return 0


def cmd_run_cmd(args: argparse.Namespace) -> int:
    from ..machine.vm import Vm

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("run-cmd needs a guest command after --")
    if args.dry_run:
        return _dry_run(_kernel(args), _vm(args), _artifacts(args, "run-cmd"))
    spec, _kernel_artifacts = _guest(args, "run-cmd")
    with Vm(spec) as vm:
        vm.start()
        vm.wait_ready()
        res = vm.run(shlex.join(command) if len(command) > 1 else command[0], args.timeout)
        sys.stdout.write(res.stdout)
        sys.stderr.write(res.stderr)
        return res.status


def _repro(args: argparse.Namespace, sc: Any, info: dict[str, Any], *, runs: int | None = None,
           until_fail: bool = False, fmt: str = "text", gdb: bool = False, bisect: bool = False) -> int:
    """Run a scenario (``repro``, ``probe``): the request, the job, the verdict lines."""
    from ..jobs import repro
    from ..run.execute import Executor
    from ..run.probe_run import gdb_hold
    from ..run.request import RunRequest

    request = RunRequest(sc, _artifacts(args, f"{args.command}-{sc.name}"), _kernel(args), _vm(args),
                         inject=args.inject, inject_every=args.inject_every,
                         workload=getattr(args, "workload", None), info=info)
    request.check()
    if args.dry_run:
        return _dry_run(request.kernel, request.vm, request.artifacts)
    hold = gdb_hold(functools.partial(print, flush=True)) if gdb else None
    rep = repro.run(request, Executor(progress=say, hold=hold), runs=runs, until_fail=until_fail, say=say)
    if args.json is not None:
        rep.final.write(args.json)
    emit = _emit(fmt)
    for line in repro.report_lines(rep):
        emit(line)
    if fmt == "ktap":
        print(repro.ktap_text(rep.final), end="")
    if rep.stopped is not None:
        say(f"interrupted by {rep.stopped[0]}: verdict written to {request.artifacts / 'verdict.json'}")
        return rep.stopped[1]
    return exit_status(rep.final.verdict, bisect=bisect)


def cmd_probe(args: argparse.Namespace) -> int:
    from ..jobs.repro import probe_scenario

    return _repro(args, probe_scenario(args.toggles, args.function, args.min_judged), {})


def cmd_repro(args: argparse.Namespace) -> int:
    from ..jobs.repro import check_runs, choose
    from ..run.scenarios_table import BY_NAME

    check_runs(args.repeat, args.runs, args.until_fail)
    choice = choose(args.scenario, trigger_path=args.trigger, function=args.function,
                    min_judged=args.min_judged, repeat=args.repeat, builtin=BY_NAME.get)
    return _repro(args, choice.scenario, choice.info, runs=args.runs, until_fail=args.until_fail,
                  fmt=args.format, gdb=args.gdb, bisect=args.bisect_exit_codes)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..jobs.bench import PARTS, run
    from ..machine.qemu_binary import check_given

    qemu = check_given(args.qemu) if args.qemu else None
    compare = check_given(args.qemu_compare) if args.qemu_compare else None
    figures = run(args.out.resolve(), boots=args.boots, stops=args.stops, toggles=args.toggles,
                  progress=say, parts=tuple(dict.fromkeys(args.part or PARTS)), jobs=args.jobs,
                  qemu=qemu, qemu_compare=compare)
    print(json.dumps(figures, indent=2))
    return 0


def cmd_qemu(args: argparse.Namespace) -> int:
    from ..host.cache import cache_dir
    from ..machine import qemu_build

    if args.jobs < 1:
        raise UsageError("-j must be at least 1")
    q = qemu_build.ensure_fast(cache_dir(), progress=say, jobs=args.jobs)
    per = "not measured" if q.tb_flushes_per_stop is None else f"{q.tb_flushes_per_stop:g}"
    print(f"{q.path}  QEMU {q.version} ({q.origin}), TB flushes per debug stop: {per}")
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    from ..run.scenarios_table import SCENARIOS

    width = max(len(s.name) for s in SCENARIOS)
    for s in SCENARIOS:
        print(f"{s.name:{width}}  {s.description}")
    return 0


def cmd_build_kernel(args: argparse.Namespace) -> int:
    from ..kernels.kbuild import BuildError, build_kernel

    try:
        res = build_kernel(args.source, args.patches, args.config_fragment, args.out, jobs=args.jobs,
                           say=say)
    except BuildError as exc:
        if exc.tail and not args.verbose:
            print(exc.tail, file=sys.stderr)
        raise
    print(f"{res.kernel_id} release {res.release} build-id {res.build_id} "
          f"built in {res.seconds:.0f} s ({res.kernel_dir})")
    return 0


def _reports(args: argparse.Namespace) -> Any:
    from ..jobs.nightly_run import Reports

    return Reports(args.out, args.previous, args.known_issues, args.kcidb, args.artifacts_url)


def _night_done(summary: dict[str, Any], out_dir: Path, fmt: str) -> int:
    from ..core.ktap import from_nightly
    from ..jobs.nightly_run import report_lines

    lines, code = report_lines(summary, out_dir)
    emit = _emit(fmt)
    for line in lines:
        emit(line)
    if fmt == "ktap":
        print(from_nightly(summary), end="")
    return code


def cmd_nightly(args: argparse.Namespace) -> int:
    from ..jobs import nightly_run
    from ..run.execute import Executor

    req = nightly_run.NightlyRequest(_reports(args), _vm(args), args.kernels, args.scenarios, args.repeat,
                                     args.shard, args.jobs)
    plan = nightly_run.plan(req)
    if args.dry_run:
        print("\n".join(f"{k} {s}" for k, s in plan.cells))
        return 0
    summary = nightly_run.run(req, plan, Executor(), progress=say)
    return _night_done(summary, args.out.resolve(), args.format)


def cmd_merge(args: argparse.Namespace) -> int:
    from ..jobs.nightly_run import merge_shards

    return _night_done(merge_shards(_reports(args), args.summaries), args.out.resolve(), args.format)


def cmd_bisect(args: argparse.Namespace) -> int:
    from ..jobs import bisect_run
    from ..run.execute import Executor
    from ..run.request import KernelChoice, RunRequest
    from ..run.scenario_file import resolve
    from ..run.scenarios_table import BY_NAME

    base = RunRequest(resolve(args.scenario, BY_NAME.get), _artifacts(args, "bisect"), KernelChoice(),
                      _vm(args))
    req = bisect_run.BisectRequest(base, args.runs, args.source, args.good, args.bad, args.debian, args.log,
                                   args.replay, args.jobs, args.scenario)
    lines, code = bisect_run.run(req, Executor(), say)
    print("\n".join(lines))
    return code
