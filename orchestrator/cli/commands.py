"""The ``pokelab`` command line.  The only module that exits the process or sets up logging."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from .. import __version__
from ..core.errors import PokelabError, UsageError
from ..core.verdict import EXIT_CODES as verdict_exit_codes
from ..core.verdict import verdict_for
from .paths import input_dir, input_file, input_file_or_dir, output_dir, output_file

log = logging.getLogger("pokelab")

#: One table maps every verdict to the process exit status: it lives in verdict.py
#: (pure data, so the nightly code can use it without importing the CLI).
EXIT_CODES = verdict_exit_codes

class _Terminated(SystemExit):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(128 + signum)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other pokelab error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CODES["USAGE"], f"pokelab: usage: {message} (see: {self.prog} --help)\n")


def _add_kernel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kernel (default: the catalog's default kernel)")
    g.add_argument("--kernel", metavar="ID",
                   help="a catalog id from `pokelab kernels`; a line (7.3: its newest ABI with -dbg; "
                        "7.3-rt-amd64); a Debian ABI (6.1.0-57, 7.3.4+deb13, 6.1.0-57-rt-amd64) or "
                        "package (linux-image-7.3.4+deb13-amd64)")
    g.add_argument("--bzimage", type=input_file(), metavar="P", help="your own kernel image (with --vmlinux)")
    g.add_argument("--vmlinux", type=input_file(), metavar="P",
                   help="its debug vmlinux (build-id must match)")
    g.add_argument("--modules", type=input_dir(), metavar="DIR",
                   help="with --bzimage: its lib/modules/<release> tree (virtio drivers built as modules)")


def _add_vm_args(p: argparse.ArgumentParser, choose_kernel: bool = True) -> None:
    """VM options; ``choose_kernel=False`` for commands that pick each kernel themselves (bisect)."""
    if choose_kernel:
        _add_kernel_args(p)
    else:
        p.set_defaults(kernel=None, bzimage=None, vmlinux=None, modules=None, dry_run=False)
    g = p.add_argument_group("virtual machine")
    g.add_argument("--smp", type=int, default=4, metavar="N", help="vCPUs (default 4)")
    g.add_argument("--memory", type=int, default=1024, metavar="MIB", help="guest RAM (default 1024)")
    g.add_argument("--accel", default="auto", choices=("auto", "tcg", "kvm"),
                   help="auto: KVM where it was seen to boot a guest, else TCG (default auto)")
    g.add_argument("--tcg-thread", default="single", choices=("single", "multi"),
                   help="TCG threading; 'multi' is known unstable for text_poke (default single)")
    _add_machine_arg(g)
    g.add_argument("--gdb-port", type=int, metavar="PORT",
                   help="gdbstub port on 127.0.0.1 (default: a free one)")
    g.add_argument("--ssh-port", type=int, metavar="PORT", help="SSH port on 127.0.0.1 (default: a free one)")
    g.add_argument("--artifacts", type=output_dir(), metavar="DIR",
                   help="artifact dir (default: artifacts/<time>-<command>-<pid>, or $POKELAB_ARTIFACTS)")
    _add_qemu_arg(g)
    if choose_kernel:
        g.add_argument("--dry-run", action="store_true", help="print the QEMU command line and exit")


def _add_machine_arg(g: Any) -> None:
    g.add_argument("--machine", default="pc", choices=("pc", "microvm"),
                   help="QEMU machine: pc (i440FX, virtio on PCI) or microvm (no PCI or legacy "
                        "timers, virtio-mmio found through ACPI; boots faster) (default pc)")


def _add_qemu_arg(g: Any) -> None:
    g.add_argument("--qemu", type=Path, metavar="PATH",
                   help="this qemu-system-x86_64 (default: the host's if its gdbstub does not flush "
                        "translated code at a stop, else the one `pokelab qemu` built)")


def _check_qemu_arg(path: Path | None) -> Path | None:
    """``--qemu PATH``: an executable file (UsageError otherwise), resolved; None stays None."""
    from ..machine.qemu_build import check_given

    return None if path is None else check_given(path)


def _vm_from_args(args: argparse.Namespace, command: str, extra_files: dict[str, Path] | None = None,
                  kernel_files: Any = None):
    from ..run.prepare import KernelChoice, default_artifacts, prepare

    artifacts = args.artifacts.resolve() if args.artifacts else default_artifacts(command)
    choice = KernelChoice(args.kernel, args.bzimage, args.vmlinux, args.modules)
    for path, what in ((args.bzimage, "--bzimage"), (args.vmlinux, "--vmlinux")):
        if path is not None and not path.is_file():
            raise UsageError(f"{what} {path}: no such file")
    if args.modules is not None and not (args.modules / "modules.dep").is_file():
        raise UsageError(f"--modules {args.modules}: no modules.dep there (a lib/modules/<release> tree "
                         "made by `make modules_install`)")
    # bad input first, before anything slow (downloads, the one-time KVM probe)
    from ..machine.qemu import check_port_free

    if args.gdb_port is not None and args.gdb_port == args.ssh_port:
        raise UsageError(f"the gdbstub and SSH cannot share port {args.gdb_port}")
    for port in (args.gdb_port, args.ssh_port):
        if port is not None:
            check_port_free(port)
    qemu_path = _check_qemu_arg(getattr(args, "qemu", None))
    spec, kernel = prepare(choice, artifacts=artifacts, smp=args.smp, accel=args.accel,
                           tcg_thread=args.tcg_thread, machine=getattr(args, "machine", "pc"),
                           memory_mb=args.memory,
                           gdb_port=args.gdb_port, ssh_port=args.ssh_port, extra_files=extra_files,
                           kernel_files=kernel_files, qemu_path=qemu_path)
    return spec, kernel


def _dry_run(spec) -> int:  # type: ignore[no-untyped-def]
    from ..machine import qemu
    from ..machine.vm import Vm

    vm = Vm(spec)
    cfg = vm.make_config(spec.gdb_port or 1234, spec.ssh_port or 10022, Path("/tmp/pokelab-XXXX"))
    print(shlex.join(qemu.build_argv(cfg)))
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


def cmd_boot(args: argparse.Namespace) -> int:
    from ..machine.vm import Vm

    spec, kernel = _vm_from_args(args, "boot")
    if args.dry_run:
        return _dry_run(spec)
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
    spec, _kernel = _vm_from_args(args, "run-cmd")
    if args.dry_run:
        return _dry_run(spec)
    with Vm(spec) as vm:
        vm.start()
        vm.wait_ready()
        res = vm.run(shlex.join(command) if len(command) > 1 else command[0], args.timeout)
        sys.stdout.write(res.stdout)
        sys.stderr.write(res.stderr)
        return res.status


def cmd_probe(args: argparse.Namespace) -> int:
    from ..host.cache import cache_dir
    from ..kernels.loadgen import GUEST_PATH, ensure_loadgen
    from ..run.probe_run import ProbeOptions, print_summary, run_probe, write_json

    if args.toggles < 1:
        raise UsageError("--toggles must be at least 1")
    extra = {GUEST_PATH: ensure_loadgen(cache_dir())}
    spec, kernel = _vm_from_args(args, "probe", extra)
    if args.dry_run:
        return _dry_run(spec)
    opts = ProbeOptions(toggles=args.toggles, function=args.function, inject=args.inject,
                        inject_every=args.inject_every, min_judged=args.min_judged)
    out = run_probe(spec, kernel, opts, progress=lambda s: print(s, file=sys.stderr, flush=True))
    print_summary(out, print)
    write_json(out, args.json)
    return EXIT_CODES[out["verdict"]]


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from ..jobs.bench import PARTS, run

    qemu, compare = _check_qemu_arg(args.qemu), _check_qemu_arg(args.qemu_compare)
    figures = run(args.out.resolve(), boots=args.boots, stops=args.stops, toggles=args.toggles,
                  progress=lambda s: print(s, file=sys.stderr, flush=True),
                  parts=tuple(dict.fromkeys(args.part or PARTS)), jobs=args.jobs,
                  qemu=qemu, qemu_compare=compare)
    print(json.dumps(figures, indent=2))
    return 0


def cmd_qemu(args: argparse.Namespace) -> int:
    from ..host.cache import cache_dir
    from ..machine import qemu_build

    if args.jobs < 1:
        raise UsageError("-j must be at least 1")
    q = qemu_build.ensure_fast(cache_dir(), progress=lambda s: print(s, file=sys.stderr, flush=True),
                               jobs=args.jobs)
    per = "not measured" if q.tb_flushes_per_stop is None else f"{q.tb_flushes_per_stop:g}"
    print(f"{q.path}  QEMU {q.version} ({q.origin}), TB flushes per debug stop: {per}")
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    from ..run.scenarios_table import SCENARIOS

    width = max(len(s.name) for s in SCENARIOS)
    for s in SCENARIOS:
        print(f"{s.name:{width}}  {s.description}")
    return 0


def _check_repro_args(args: argparse.Namespace) -> None:
    """Usage errors of ``pokelab repro`` that need no scenario, kernel or file."""
    if args.repeat is not None and args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    if args.runs is not None and args.runs < 1:
        raise UsageError("--runs must be at least 1")
    if args.until_fail and args.runs is None:
        raise UsageError("--until-fail needs --runs N (the most runs to try)")


def _trap_summary(out: dict[str, Any]) -> list[str]:
    """The short trap summary of one run: sites, opcodes, targets, violations."""
    from ..core.budget import summary_line
    from ..jobs.nightly import ARTIFACT_FILES
    from ..run.probe_run import trap_targets

    floor = out.get("floor_traps")
    lines = [f"traps judged {out.get('traps_judged', 0)}"
             + (f" ({floor} at the watched sites)" if floor is not None else "")
             + f", violations {out.get('violations', 0)}"]
    budget_line = summary_line(out.get("budget"))
    if budget_line:
        lines.append("  " + budget_line)
    wd = out.get("watchdogs")
    if isinstance(wd, dict):
        lines.append(f"  guest watchdogs (x{wd['slowdown']}): RCU stall {wd['rcu_cpu_stall_timeout_s']} s, "
                     f"soft lockup {wd['soft_lockup_after_s']} s, hung task {wd['hung_task_timeout_s']} s")
    sites = out.get("sites") or {}
    if sites:
        top = sorted(sites.items(), key=lambda kv: -kv[1]["traps"])[:5]
        lines.append(f"  sites ({len(sites)}): "
                     + ", ".join(f"{v['name']} {k} x{v['traps']}" for k, v in top))
    if out.get("opcodes"):
        lines.append("  opcodes: " + ", ".join(f"{k} x{v}" for k, v in out["opcodes"].items()))
    if out.get("users") or out.get("batch_users"):
        lines.append("  users: " + (", ".join(f"{k} x{v}" for k, v in (out.get("users") or {}).items())
                                    or "-")
                     + "  (batches: " + (", ".join(f"{k} x{v}" for k, v in
                                                   (out.get("batch_users") or {}).items()) or "-") + ")")
    targets = trap_targets(out.get("trap_log"))
    if targets:
        lines.append(f"  targets ({len(targets)}): " + ", ".join(f"{k} x{v}" for k, v in targets[:5]))
    for v in out.get("violation_examples", [])[:3]:
        lines.append(f"  violation at {v.get('symbol')}: {v.get('reason')}")
    art = Path(out["artifacts"])
    present = [f for f in ARTIFACT_FILES if (art / f).exists()]
    lines.append(f"artifacts: {art}  ({' '.join(present)})")
    return lines


def _gdb_hold() -> Callable[[Any], None]:
    """``--gdb``: stop the guest at the first violation, print how to attach, wait for Ctrl-C."""
    import time

    from ..run.probe_run import StoppedAtViolation, stop_for_gdb

    def hold(run: Any) -> None:
        v = (run.probe.violations or [{}])[0]
        line = stop_for_gdb(run)
        print(f"violation at {v.get('symbol')}: {v.get('reason')}", flush=True)
        print("the guest is stopped there, no debugger attached; attach with:", flush=True)
        print(f"  {line}", flush=True)
        print("Ctrl-C ends the VM", flush=True)
        try:
            while not run.vm.qemu_exited():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        raise StoppedAtViolation(f"stopped at the first violation for --gdb ({v.get('reason')})")

    return hold


def cmd_repro(args: argparse.Namespace) -> int:
    import dataclasses

    from ..core.errors import RunInterrupted
    from ..core.verdict import REPRODUCED, exit_status
    from ..host.cache import cache_dir
    from ..jobs.repro import choose, combine, ktap_text
    from ..kernels.loadgen import GUEST_PATH, ensure_loadgen
    from ..run.probe_run import write_json
    from ..run.scenario import guest_files, run_scenario
    from ..run.scenarios_table import BY_NAME

    _check_repro_args(args)
    choice = choose(args.scenario, trigger_path=args.trigger, function=args.function,
                    min_judged=args.min_judged, repeat=args.repeat, builtin=BY_NAME.get)
    sc = choice.scenario
    extra = {GUEST_PATH: ensure_loadgen(cache_dir())}
    spec, kernel = _vm_from_args(args, f"repro-{sc.name}", extra,
                                 kernel_files=lambda k, c: guest_files(sc, k, c))
    if args.dry_run:
        return _dry_run(spec)

    def say(msg: str) -> None:
        print(f"pokelab: {msg}", file=sys.stderr, flush=True)

    hold = _gdb_hold() if args.gdb else None
    n = args.runs or 1
    results: list[dict[str, Any]] = []
    stopped: tuple[str, int] | None = None  # (signal, exit status) of an interrupted run
    try:
        for i in range(n):
            run_spec = spec if args.runs is None else dataclasses.replace(
                spec, artifacts=spec.artifacts / f"run-{i + 1}")
            if args.runs is not None:
                say(f"run {i + 1}/{n}")
            try:
                out = run_scenario(run_spec, kernel, sc, inject=args.inject, workload=args.workload,
                                   progress=say, hold=hold, info=choice.info)
            except RunInterrupted as exc:  # its verdict.json is written; the runs' one follows
                results.append(exc.out)
                stopped = (exc.signal_name, exc.code)
                break
            results.append(out)
            if args.runs is not None:
                say(f"run {i + 1}/{n}: {out['verdict']} in {out.get('phases', {}).get('total_s', 0):.1f} s")
            if args.until_fail and out["verdict"] in REPRODUCED:
                break
    except KeyboardInterrupt:  # between runs
        stopped = ("SIGINT", 130)
    except _Terminated as exc:
        stopped = ("SIGTERM", int(exc.code or 143))
    final = combine(results, runs=args.runs, interrupted=stopped[0] if stopped else None,
                    extra={"scenario": sc.name, "kernel": results[0].get("kernel") if results else None,
                           "kernel_id": kernel.id, "kernel_package": kernel.package,
                           "kernel_version": kernel.version, **spec.qemu_record, "inject": args.inject,
                           "until_fail": args.until_fail, "artifacts": str(spec.artifacts)})
    spec.artifacts.mkdir(parents=True, exist_ok=True)
    (spec.artifacts / "verdict.json").write_text(json.dumps(final, indent=2) + "\n")
    write_json(final, args.json)
    # --format ktap: stdout is the KTAP document alone, the human lines go to stderr
    emit = print if args.format == "text" else functools.partial(print, file=sys.stderr)
    emit(f"{sc.name} on {final.get('kernel')}: {final['verdict']}  ({'; '.join(final.get('reasons', []))})")
    if args.runs is not None:
        emit(f"runs {final['runs']}, failures {final['failures']}, rate {final['rate']:.2f}")
        for o in results:
            emit(f"  {o['verdict']:12} {o['artifacts']}")
    for i, line in enumerate(_trap_summary(results[-1]) if results else []):
        emit(f"run {len(results)}: {line}" if args.runs is not None and i == 0 else line)
    if args.runs is not None:
        emit(f"summary: {spec.artifacts / 'verdict.json'}")
    if args.format == "ktap":
        print(ktap_text(final), end="")
    if stopped is not None:
        print(f"pokelab: interrupted by {stopped[0]}: verdict written to {spec.artifacts / 'verdict.json'}",
              file=sys.stderr)
        return stopped[1]
    return exit_status(final["verdict"], bisect=args.bisect_exit_codes)


def _read_json(path: Path, what: str) -> Any:
    import json

    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{what} {path}: not JSON ({exc})") from None


def _nightly_context(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """(previous summary or None, known issues) for nightly and merge; bad files are usage errors."""
    from ..jobs.nightly import load_known_issues

    previous = _read_json(args.previous, "--previous") if args.previous else None
    issues: list[Any] = []
    if args.known_issues is not None:
        try:
            issues = load_known_issues(args.known_issues)
        except OSError as exc:
            raise UsageError(f"--known-issues {args.known_issues}: {exc.strerror}") from None
        except ValueError as exc:
            raise UsageError(f"--known-issues {args.known_issues}: {exc}") from None
    kc = args.kcidb
    if kc is not None and not kc.resolve().parent.is_dir() and kc.resolve().parent != args.out.resolve():
        raise UsageError(f"--kcidb {kc}: directory does not exist")
    return previous, issues


def _nightly_runner(args: argparse.Namespace,
                    table: dict[str, Any]) -> Callable[[str, str, Path], dict[str, Any]]:
    """One matrix cell, the way `pokelab repro` runs a scenario: _vm_from_args + run_scenario."""
    from ..host.cache import cache_dir
    from ..kernels.loadgen import GUEST_PATH, ensure_loadgen
    from ..run.scenario import guest_files, run_scenario, with_options

    prepare_lock = threading.Lock()  # one cache writer at a time (downloads, initramfs builds)

    def run(kernel: str, scenario: str, artifacts: Path) -> dict[str, Any]:
        sc = with_options(table[scenario], repeat=args.repeat)
        ns = argparse.Namespace(kernel=kernel, bzimage=None, vmlinux=None, modules=None, smp=args.smp,
                                memory=args.memory, accel=args.accel, tcg_thread=args.tcg_thread,
                                machine=args.machine,
                                gdb_port=None, ssh_port=None, artifacts=artifacts, dry_run=False,
                                qemu=args.qemu)
        try:
            with prepare_lock:
                extra = {GUEST_PATH: ensure_loadgen(cache_dir())}
                spec, kern = _vm_from_args(ns, f"nightly-{scenario}", extra,
                                           kernel_files=lambda k, c: guest_files(sc, k, c))
        except PokelabError as exc:
            return {"kernel_id": kernel, "verdict": verdict_for(exc), "reasons": [exc.title]}
        return run_scenario(spec, kern, sc, progress=lambda s: log.debug("%s %s: %s", kernel, scenario, s))

    return run


def cmd_nightly(args: argparse.Namespace) -> int:
    import datetime as dt

    from ..host.cache import cache_dir
    from ..jobs.nightly import (
        annotate,
        exit_status,
        matrix,
        new_summary,
        parse_list,
        parse_shard,
        run_matrix,
        shard,
        write_reports,
    )
    from ..kernels.catalog import Catalog
    from ..kernels.debian import fetchable
    from ..kernels.images import is_cached
    from ..run.scenario_file import nightly_table
    from ..run.scenarios_table import BY_NAME, SCENARIOS

    args.qemu = _check_qemu_arg(args.qemu)
    try:
        kernels = parse_list(args.kernels)
        scenarios = parse_list(args.scenarios)
        shard_of = parse_shard(args.shard)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.jobs < 1:
        raise UsageError("-j must be at least 1")
    if args.repeat is not None and args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    cat = Catalog.load()
    for k in kernels or []:  # catalog ids, kernels built here, Debian ABIs (as --kernel takes)
        if k.startswith("custom-"):
            from ..kernels.images import custom_kernel

            custom_kernel(k, cache_dir())  # a usage error if it was never built here
        else:
            try:
                cat.lookup(k)
            except UsageError:
                raise UsageError(f"unknown kernel '{k}' (see: pokelab kernels)") from None
    table = nightly_table(scenarios or [s.name for s in SCENARIOS], BY_NAME)  # names and FILE.toml
    previous, issues = _nightly_context(args)
    if kernels is None:
        kernels = [k.id for k in cat.kernels
                   if ((spec := _resolved_offline(k, cache_dir())) and is_cached(spec, cache_dir()))
                   or fetchable(k, cache_dir())]
    cells = matrix(kernels, list(table))
    if shard_of is not None:
        cells = shard(cells, *shard_of)
    if args.dry_run:
        for k, s in cells:
            print(f"{k} {s}")
        return 0
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    print(f"nightly: {len(cells)} cell(s), {args.jobs} at a time, into {out_dir}",
          file=sys.stderr, flush=True)
    results: list[dict[str, Any]] = []
    try:
        run_matrix(cells, _nightly_runner(args, table), out_dir, jobs=args.jobs, results=results,
                   progress=lambda s: print(s, file=sys.stderr, flush=True))
    finally:  # interrupted too: report what ran, the rest as MISSING (exit 2 via INCOMPLETE)
        order = {c: i for i, c in enumerate(cells)}
        results.sort(key=lambda r: order.get((r["kernel_id"], r["scenario"]), len(order)))
        summary = annotate(new_summary(cells, results, shard_spec=args.shard, started=started),
                           previous, issues)
        write_reports(summary, out_dir, args.kcidb, args.artifacts_url)
    return _report_done(summary, out_dir, exit_status(summary), args.format)


def _report_done(summary: dict[str, Any], out_dir: Path, code: int, fmt: str = "text") -> int:
    from ..core.ktap import from_nightly

    # --format ktap: stdout is the KTAP document alone, the human lines go to stderr
    emit = print if fmt == "text" else functools.partial(print, file=sys.stderr)
    for r in summary["results"]:
        mark = (f" [known issue {r['known_issue']['id']}]" if r.get("known_issue")
                else f" [{r['change']}]" if r.get("change") else "")
        emit(f"{r['kernel_id']:10} {r['scenario']:24} {r['verdict']}{mark}")
    emit(f"reports: {out_dir}/index.html, junit.xml, summary.json; exit status {code}")
    if fmt == "ktap":
        print(from_nightly(summary), end="")
    return code


def cmd_merge(args: argparse.Namespace) -> int:
    from ..jobs.nightly import annotate, exit_status, merge, write_reports

    previous, issues = _nightly_context(args)
    out_dir = args.out.resolve()
    loaded = [(_read_json(p, "summary"), p.resolve().parent) for p in args.summaries]
    try:
        summary = merge(loaded, out_dir)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"merge: {exc}") from None
    summary = annotate(summary, previous, issues)
    write_reports(summary, out_dir, args.kcidb, args.artifacts_url)
    return _report_done(summary, out_dir, exit_status(summary), args.format)


def _add_nightly_parsers(sub: Any) -> None:
    """The nightly matrix and the merge of its shards (orchestrator/nightly.py, docs/nightly.md)."""
    s = sub.add_parser("nightly", help="run the kernel x scenario matrix; write JUnit, JSON and HTML reports")
    s.add_argument("--kernels", metavar="A,B",
                   help="kernel ids as --kernel takes them: catalog, custom-*, Debian ABIs "
                        "(default: every catalog kernel cached or fetchable)")
    s.add_argument("--scenarios", metavar="A,B",
                   help="scenario names or scenario files FILE.toml (docs/scenarios.md); "
                        "default: every built-in scenario")
    s.add_argument("--repeat", type=int, metavar="N", help="cycles of each scenario's steps")
    s.add_argument("--shard", metavar="I/N", help="run only shard I of N (1-based, deterministic)")
    s.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="parallel VMs (default 1)")
    s.add_argument("--out", type=output_dir(), default="nightly", metavar="DIR",
                   help="default ./nightly")
    _add_report_args(s)
    s.add_argument("--smp", type=int, default=4, metavar="N", help="vCPUs (default 4)")
    s.add_argument("--memory", type=int, default=1024, metavar="MIB", help="guest RAM (default 1024)")
    s.add_argument("--accel", default="auto", choices=("auto", "tcg", "kvm"))
    s.add_argument("--tcg-thread", default="single", choices=("single", "multi"))
    _add_machine_arg(s)
    _add_qemu_arg(s)
    s.add_argument("--dry-run", action="store_true", help="print the cells this run would do and exit")
    s.set_defaults(func=cmd_nightly)

    s = sub.add_parser("merge", help="join nightly shard summaries into one summary, JUnit and HTML")
    s.add_argument("out", type=output_dir(), metavar="OUT", help="output dir")
    s.add_argument("summaries", type=input_file(text=True), nargs="+", metavar="SUMMARY",
                   help="shard summary.json files")
    _add_report_args(s)
    s.set_defaults(func=cmd_merge)


def _add_report_args(s: Any) -> None:
    """The report options nightly and merge share."""
    s.add_argument("--previous", type=input_file(text=True), metavar="SUMMARY",
                   help="a previous summary.json to compare with")
    s.add_argument("--known-issues", type=input_file(text=True), metavar="FILE",
                   help="known flakes (TOML or JSON, docs/nightly.md)")
    s.add_argument("--kcidb", type=output_file("create"), metavar="FILE",
                   help="also write KCIDB-style JSON here")
    s.add_argument("--artifacts-url", metavar="URL",
                   help="where OUT is published: KCIDB output_files URLs are made from it")
    s.add_argument("--format", choices=("text", "ktap"), default="text",
                   help="stdout: text (default) or KTAP v1, one test per cell (the text lines go to stderr)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pokelab",
        description="Boot a kernel in QEMU, watch its text_poke int3 emulation through GDB, judge it.")
    p.add_argument("--version", action="version", version=f"pokelab {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("kernels", help="list the known kernels (catalog and built here) and which are cached")
    s.add_argument("--debian", action="store_true",
                   help="list instead every Debian kernel in pokelab's apt sources, each line, flavour "
                        "(cloud-amd64, amd64, rt-amd64) and suite (any with -dbg works as --kernel ABI "
                        "and as a `bisect --debian` endpoint)")
    s.add_argument("--remove", nargs="+", metavar="ID",
                   help="free cache space: delete kernels built here (custom-<id>, or 'built' for all of "
                        "them) or fetched Debian kernels (id or ABI; fetched again when next used)")
    s.set_defaults(func=cmd_kernels)

    s = sub.add_parser("images", help="fetch and prepare kernels and initramfs (cached)")
    s.add_argument("--kernel", action="append", metavar="ID",
                   help="kernel id, repeatable, or 'all' (default: the default kernel)")
    s.set_defaults(func=cmd_images)

    s = sub.add_parser("qemu", help="make sure a QEMU without the per-stop translation flush is at hand: "
                                    "the host's if it has none, else build QEMU 10.2 once into the cache")
    s.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, metavar="N",
                   help="ninja -j for the build (default: the CPU count)")
    s.set_defaults(func=cmd_qemu)

    s = sub.add_parser("boot", help="boot a guest and print how to connect (ssh, gdb)")
    _add_vm_args(s)
    s.add_argument("--keep", action="store_true", help="keep the guest up until Ctrl-C")
    s.set_defaults(func=cmd_boot)

    s = sub.add_parser("run-cmd", help="boot, run one guest command over SSH, exit with its status")
    _add_vm_args(s)
    s.add_argument("--timeout", type=float, default=120.0, help="guest command deadline, s (default 120)")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    s.set_defaults(func=cmd_run_cmd)

    s = sub.add_parser("probe", help="toggle the function tracer under load and judge every int3 emulation")
    _add_vm_args(s)
    s.add_argument("--toggles", type=int, default=10, metavar="N", help="enable+disable cycles (default 10)")
    s.add_argument("--function", default="__do_sys_getpid",
                   help="function to trace (the real symbol; default __do_sys_getpid)")
    s.add_argument("--inject", choices=("wrong-target", "wrong-return", "skip-call"),
                   help="corrupt the emulation at chosen CALL traps (wrong-target: JMP32 ones too; "
                        "self-test: must end FAIL)")
    s.add_argument("--inject-every", type=int, default=2, metavar="K",
                   help="inject at every K-th eligible trap (default 2)")
    s.add_argument("--min-judged", type=int, default=1, metavar="N",
                   help="fewer traps judged at the traced function's own site is INCONCLUSIVE (default 1)")
    s.add_argument("--json", type=output_file(), metavar="FILE", help="write the JSON summary here too")
    s.set_defaults(func=cmd_probe)

    s = sub.add_parser("bench", help="measure boot time, probe cost and kernel builds; write flat JSON")
    s.add_argument("--out", type=output_file("create"), default="bench/latest.json",
                   help="default bench/latest.json")
    s.add_argument("--part", action="append", choices=("vm", "kbuild"),
                   help="run only this part (repeatable; default both): vm = boots, stops, probe cost; "
                        "kbuild = cold full build, incremental build, one bisect step (~12 min). "
                        "The other part's figures already in --out are kept")
    s.add_argument("-j", "--jobs", type=int, default=2, metavar="N", help="make -j for kbuild (default 2)")
    s.add_argument("--boots", type=int, default=5, help="boots for the boot-time median (default 5)")
    s.add_argument("--stops", type=int, default=100, help="stops for the stop-cost median (default 100)")
    s.add_argument("--toggles", type=int, default=10, help="probe toggles (default 10)")
    _add_qemu_arg(s)
    s.add_argument("--qemu-compare", type=Path, metavar="PATH",
                   help="part vm: measure this second qemu-system-x86_64 in the same run, alternating "
                        "with the first; its figures go under 'compare'")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("scenarios", help="list the scenarios, one line each")
    s.set_defaults(func=cmd_scenarios)

    s = sub.add_parser("repro", help="run one scenario under the probe and write a JSON verdict")
    s.add_argument("scenario", metavar="SCENARIO", nargs="?",
                   help="a name from `pokelab scenarios`, or a scenario file FILE.toml (docs/scenarios.md)")
    s.add_argument("--trigger", type=input_file_or_dir(), metavar="FILE|DIR",
                   help="instead of a scenario: your trigger (a script, a binary, a .tc file or a dir of "
                        ".tc files) copied in and run from vCPU 0, the default load on the others")
    s.add_argument("--min-judged", type=int, metavar="N",
                   help="the floor: fewer traps judged (at --function's site, if given) is INCONCLUSIVE")
    s.add_argument("--format", choices=("text", "ktap"), default="text",
                   help="stdout: text (default) or KTAP v1 (the text lines go to stderr)")
    s.add_argument("--bisect-exit-codes", action="store_true",
                   help="exit as `git bisect run` expects: 0 PASS, 1 FAIL/CRASH, 125 other verdicts, "
                        "128 bad usage (aborts the bisect)")
    _add_vm_args(s)
    s.add_argument("--inject", choices=("wrong-target", "wrong-return", "skip-call"),
                   help="corrupt the emulation at chosen CALL traps (wrong-target: JMP32 ones too; "
                        "self-test: must end FAIL)")
    s.add_argument("--workload", type=input_file(), metavar="FILE",
                   help="a static binary or script to copy in and run pinned as the load")
    s.add_argument("--repeat", type=int, metavar="N", help="cycles of the scenario's steps")
    s.add_argument("--runs", type=int, metavar="N",
                   help="boot and run the scenario N times, each in artifacts/run-I (a failure rate)")
    s.add_argument("--until-fail", action="store_true",
                   help="with --runs: stop at the first FAIL or CRASH")
    s.add_argument("--gdb", action="store_true",
                   help="at the first violation leave the guest stopped and print the gdb command; "
                        "Ctrl-C ends it")
    s.add_argument("--function", help="trace this function instead (the real symbol); with --trigger: the "
                                      "function whose site is read back and whose traps count to the floor")
    s.add_argument("--json", type=output_file(), metavar="FILE", help="write the JSON verdict here too")
    s.set_defaults(func=cmd_repro)

    s = sub.add_parser("build-kernel", help="build a guest kernel from source (+patches) and register it")
    s.add_argument("--source", type=input_dir(), metavar="DIR",
                   help="kernel tree, plain or git (default: Debian's linux-source-6.1, unpacked once)")
    s.add_argument("--patches", type=input_file_or_dir(text=True), nargs="+", default=[], metavar="DIR|FILE",
                   help="patches applied with patch -p1 to a scratch copy, in order (a dir: its *.patch)")
    s.add_argument("--config-fragment", type=input_file(text=True), nargs="+", default=[], metavar="FILE",
                   help="config fragments merged on allnoconfig (default: images/config/*.config)")
    s.add_argument("--out", type=output_dir(), metavar="DIR", help="make O= dir (default: under the cache)")
    s.add_argument("-j", "--jobs", type=int, default=2, metavar="N", help="make -j (default 2)")
    s.set_defaults(func=cmd_build_kernel)

    _add_nightly_parsers(sub)

    s = sub.add_parser("bisect", help="find the commit (or Debian kernel version) that brought a regression",
                       description="Bisect a git kernel tree (--source, --good, --bad: build, boot, run, "
                                   "judge each revision) or Debian's prebuilt cloud-amd64 kernels "
                                   "(--debian A..B: fetch, boot, run, judge; no builds).")
    s.add_argument("--source", type=input_dir(), metavar="DIR",
                   help="a git kernel checkout (bisected in a scratch worktree; yours is not touched)")
    s.add_argument("--good", metavar="REV", help="with --source: a revision the scenario passes on")
    s.add_argument("--bad", metavar="REV", help="with --source: a revision the scenario fails on")
    s.add_argument("--debian", metavar="GOOD..BAD",
                   help="bisect the Debian cloud-amd64 kernels apt knows between two versions, named by ABI "
                        "(6.1.0-47), release, package version (6.1.170-3) or catalog id (6.1)")
    s.add_argument("--scenario", required=True,
                   help="a name from `pokelab scenarios`, or a scenario file FILE.toml")
    s.add_argument("--runs", type=int, default=3, metavar="N",
                   help="scenario runs per revision (default 3; good needs min(N, 3) clean runs and no "
                        "failure, bad needs 2 failing runs)")
    s.add_argument("--log", type=output_file("create"), metavar="FILE",
                   help="JSON-lines bisect log (default: --replay's file, else under the artifacts)")
    s.add_argument("--replay", type=input_file(text=True), metavar="FILE",
                   help="resume from a bisect log: logged revisions are not run again")
    s.add_argument("-j", "--jobs", type=int, default=2, metavar="N", help="make -j with --source (default 2)")
    _add_vm_args(s, choose_kernel=False)
    s.set_defaults(func=cmd_bisect)
    return p


def cmd_build_kernel(args: argparse.Namespace) -> int:
    from ..kernels.kbuild import BuildError, build_kernel

    try:
        res = build_kernel(args.source, args.patches, args.config_fragment, args.out, jobs=args.jobs,
                           say=lambda msg: print(f"pokelab: {msg}", file=sys.stderr))
    except BuildError as exc:
        if exc.tail and not args.verbose:
            print(exc.tail, file=sys.stderr)
        raise
    print(f"{res.kernel_id} release {res.release} build-id {res.build_id} "
          f"built in {res.seconds:.0f} s ({res.kernel_dir})")
    return 0


def cmd_bisect(args: argparse.Namespace) -> int:
    from ..core.bisect_logic import Policy
    from ..host.cache import cache_dir
    from ..jobs.bisect import kernel_step, read_log, run_bisect
    from ..kernels.loadgen import GUEST_PATH, ensure_loadgen
    from ..run.prepare import default_artifacts
    from ..run.scenario import guest_files, run_scenario
    from ..run.scenario_file import resolve as resolve_scenario
    from ..run.scenarios_table import BY_NAME

    if args.debian is not None:
        for opt in ("source", "good", "bad"):
            if getattr(args, opt) is not None:
                raise UsageError(f"--{opt} does not go with --debian (GOOD..BAD names both endpoints)")
    elif args.source is None or args.good is None or args.bad is None:
        raise UsageError("give --source DIR --good REV --bad REV, or --debian GOOD..BAD")
    if args.runs < 1:
        raise UsageError("--runs must be >= 1")
    args.qemu = _check_qemu_arg(args.qemu)
    sc = resolve_scenario(args.scenario, BY_NAME.get)  # a name or a FILE.toml
    if args.debian is not None:
        from ..kernels.debian import parse_range

        parse_range(args.debian)  # a malformed range fails before anything is prepared
    replay = read_log(args.replay) if args.replay is not None else None
    artifacts = args.artifacts.resolve() if args.artifacts else default_artifacts("bisect")
    log_path = (args.log or args.replay or artifacts / "bisect.jsonl").resolve()
    policy = Policy(min_clean=min(3, args.runs))
    cache = cache_dir()
    extra = {GUEST_PATH: ensure_loadgen(cache)}

    def say(msg: str) -> None:
        print(f"pokelab: {msg}", file=sys.stderr, flush=True)

    def run_one(kernel_id: str, where: Path) -> str:  # the same path as `pokelab repro`
        run_args = argparse.Namespace(**{**vars(args), "kernel": kernel_id, "artifacts": where})
        spec, kernel = _vm_from_args(run_args, f"bisect-{sc.name}", extra,
                                     kernel_files=lambda k, c: guest_files(sc, k, c))
        out = run_scenario(spec, kernel, sc, progress=lambda m: log.debug("%s", m))
        return str(out["verdict"])

    if args.debian is not None:
        return _bisect_debian(args, policy, replay, log_path, artifacts, run_one, say)
    say(f"bisect log: {log_path}")
    step = kernel_step(lambda sha, i, res: run_one(res.kernel_id, artifacts / sha[:12] / f"run-{i + 1}"),
                       jobs=args.jobs, runs=args.runs, say=say)
    res = run_bisect(args.source, args.good, args.bad, step, work=cache / "bisect", log_path=log_path,
                     replay=replay, policy=policy, say=say)
    return _print_git_bisect(args.source, res, log_path)


def _print_git_bisect(source: Path, res: Any, log_path: Path) -> int:
    from ..jobs.bisect import commit_line

    conf = "unknown" if res.confidence is None else f"{res.confidence:.3f}"
    if res.culprit is None:
        print("only skipped commits left; the first bad commit is one of:")
        for c in res.candidates:
            print(f"  {commit_line(source, c)}")
        print(f"confidence {conf}  (log: {log_path})")
        return 1
    print(f"{res.culprit} is the first bad commit")
    print(f"  {commit_line(source, res.culprit)}")
    print(f"confidence {conf} over {len(res.verdicts)} judged revisions, {res.steps_run} run now "
          f"(log: {log_path})")
    return 0


def _bisect_debian(args: argparse.Namespace, policy: Any, replay: dict[str, list[str]] | None,
                   log_path: Path, artifacts: Path, run_one: Callable[[str, Path], str],
                   say: Callable[[str], None]) -> int:
    from ..host.cache import cache_dir
    from ..jobs.bisect import debian_report, debian_step, run_debian_bisect
    from ..kernels.catalog import DEFAULT_FLAVOUR, Catalog
    from ..kernels.debian import available, parse_range, resolve, select_range

    good, bad = parse_range(args.debian)
    cat = Catalog.load()
    ends = []
    for name in (good, bad):
        try:
            ends.append(cat.lookup(name))
        except UsageError:
            pass  # a package version (6.1.170-3): select_range finds it, or says it is unknown
    flavours = {e.flavour for e in ends} or {DEFAULT_FLAVOUR}
    if len(flavours) != 1:
        raise UsageError(f"--debian {args.debian}: the endpoints are of different flavours "
                         f"({', '.join(sorted(flavours))})")
    kernels = available(cache_dir(), flavours.pop())
    aliases = {e.id: resolve(e, kernels).release for e in ends}
    rng = select_range(kernels, good, bad, aliases)
    say(f"{len(rng.judged)} Debian kernels with -dbg from {rng.judged[0].label} to {rng.judged[-1].label}")
    if rng.unjudgeable:
        say(f"not judgeable (no -dbg in the archive): {', '.join(k.abi for k in rng.unjudgeable)}")
    say(f"bisect log: {log_path}")
    step = debian_step(lambda k, i: run_one(k.release, artifacts / k.abi / f"run-{i + 1}"),
                       runs=args.runs, say=say)
    res = run_debian_bisect(rng, step, log_path=log_path, replay=replay, policy=policy, say=say)
    lines, code = debian_report(res, args.scenario, log_path)
    print("\n".join(lines))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    from ..core.errors import RunInterrupted, signal_exception
    from ..core.verdict import exit_status

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    bisect = "--bisect-exit-codes" in argv
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad command line must not mark a revision bad (verdict.BISECT_USAGE_EXIT)
        if bisect and exc.code == EXIT_CODES["USAGE"]:
            return exit_status("USAGE", bisect=True)
        raise
    logging.basicConfig(level=logging.DEBUG if args.verbose >= 2 else logging.WARNING,
                        format="pokelab: %(message)s", stream=sys.stderr)
    logging.getLogger("orchestrator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.verbose < 2:  # libraries' own chatter (connection retries, key exchange)
        for name in ("qemu.qmp", "paramiko"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, _on_sigterm)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except PokelabError as exc:
        verdict = verdict_for(exc)
        print(f"pokelab: {verdict.lower().replace('_', ' ')}: {exc.title}", file=sys.stderr)
        if exc.tail and args.verbose:
            print(exc.tail, file=sys.stderr)
        return exit_status(verdict, bisect=bool(getattr(args, "bisect_exit_codes", False)))
    except RunInterrupted as exc:  # its verdict.json is written
        print(f"pokelab: interrupted by {exc.signal_name}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("pokelab: interrupted", file=sys.stderr)
        return 130
    except _Terminated as exc:
        print("pokelab: terminated", file=sys.stderr)
        return int(exc.code or 143)
    except BaseException as exc:  # a signal's exception raised inside a lock's wait may surface as
        sig = signal_exception(exc)  # another error ("release unlocked lock"): still the signal
        if sig is None:
            raise
        print("pokelab: interrupted" if isinstance(sig, KeyboardInterrupt) else "pokelab: terminated",
              file=sys.stderr)
        return 130 if isinstance(sig, KeyboardInterrupt) else int(getattr(sig, "code", None) or 143)

