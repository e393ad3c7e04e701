"""The ``pokelab`` argument parser.

Most options come from the fields of the typed requests they fill (:func:`fields`:
``core.fields.option`` metadata on ``KernelChoice``, ``VmOptions``, ``RunRequest``,
``ReproOptions``, ``NightlyRequest``, ``Reports``, ``BisectRequest``), so each default
and help is written once.  A bad option or path is one ``pokelab: usage:`` line and
exit 2 (:class:`Parser`); paths are checked while parsing (:mod:`orchestrator.host.userpaths`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..core.verdict import EXIT_CODES
from ..host import userpaths as up
from ..jobs.bench import BenchRequest
from ..jobs.bisect_run import BisectRequest
from ..jobs.kernels import BuildRequest
from ..jobs.nightly_run import NightlyRequest, Reports
from ..jobs.repro import ReproOptions
from ..run.request import KernelChoice, RunRequest, VmOptions

SCENARIO_HELP = "a name from `pokelab scenarios`, or a scenario file FILE.toml (docs/scenarios.md)"
DRY_RUN_QEMU = "print the QEMU command line and exit (nothing is fetched, built or booted)"


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other pokelab error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CODES["USAGE"], f"pokelab: usage: {message} (see: {self.prog} --help)\n")


def _path(check: Callable[..., Path], **kw: Any) -> Callable[[str], Path]:
    """A ``type=`` of a :mod:`~orchestrator.host.userpaths` check: a refused path is a usage error."""

    def typed(path: str) -> Path:
        try:
            return check(path, **kw)
        except up.PathRefused as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return typed


#: ``core.fields.PATH_KINDS`` -> the check made while parsing
PATHS = {"file": _path(up.input_file), "text": _path(up.input_file, text=True), "dir": _path(up.input_dir),
         "file-or-dir": _path(up.input_file_or_dir), "text-or-dir": _path(up.input_file_or_dir, text=True),
         "out-dir": _path(up.output_dir), "out-file": _path(up.output_file),
         "new-file": _path(up.output_file, parent="create")}  # new-file: its directory is made if need be


def fields(p: Any, cls: type, *only: str) -> None:
    """An option per field of ``cls`` that has ``core.fields.option`` metadata (``only``: these)."""
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata.get("cli") or {})
        if not meta or (only and f.name not in only):
            continue
        flags = meta.pop("flag", "--" + f.name.replace("_", "-")).split()
        if "path" in meta:
            meta["type"] = PATHS[meta.pop("path")]
        if f.default is not dataclasses.MISSING:
            meta["default"] = f.default
        if f.default not in (None, False, (), dataclasses.MISSING):
            meta["help"] += f" (default {f.default})"
        p.add_argument(*flags, dest=f.name, **meta)


def _vm_args(p: Any, *, kernel: bool = True, ports: bool = True, dry_run: str = DRY_RUN_QEMU) -> None:
    """The kernel and VM options of every command that boots a guest; ``dry_run``: --dry-run's help."""
    if kernel:
        fields(p.add_argument_group("kernel (default: the catalog's default kernel)"), KernelChoice)
    g = p.add_argument_group("virtual machine")
    fields(g, VmOptions, *(() if ports else ("smp", "memory_mb", "accel", "tcg_thread", "machine", "qemu")))
    if ports:
        g.add_argument("--artifacts", type=PATHS["out-dir"], metavar="DIR",
                       help="artifact dir (default: artifacts/<time>-<command>-<pid>, or "
                            "$POKELAB_ARTIFACTS)")
    if ports:
        g.add_argument("--dry-run", action="store_true", help=dry_run)


def build_parser() -> argparse.ArgumentParser:
    """The parser; ``command`` names the subcommand (:func:`.commands.handler` runs it)."""
    p = Parser(prog="pokelab",
               description="Boot a kernel in QEMU, watch its text_poke int3 emulation through GDB, judge it.")
    p.add_argument("--version", action="version", version=f"pokelab {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    cmd = p.add_subparsers(dest="command", metavar="COMMAND", required=True).add_parser

    s = cmd("kernels", help="list the known kernels (catalog and built here) and which are cached")
    s.add_argument("--debian", action="store_true",
                   help="list instead every Debian kernel in pokelab's apt sources, each line, flavour "
                        "(cloud-amd64, amd64, rt-amd64) and suite (any with -dbg works as --kernel ABI "
                        "and as a `bisect --debian` endpoint)")
    s.add_argument("--remove", nargs="+", metavar="ID",
                   help="free cache space: delete kernels built here (custom-<id>, or 'built' for all of "
                        "them) or fetched Debian kernels (id or ABI; fetched again when next used)")

    s = cmd("images", help="fetch and prepare kernels and initramfs (cached)")
    s.add_argument("--kernel", action="append", metavar="ID",
                   help="kernel id, repeatable, or 'all' (default: the default kernel)")

    s = cmd("qemu", help="make sure a QEMU without the per-stop translation flush is at hand: the host's "
                         "if it has none, else build QEMU 10.2 once into the cache")
    s.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, metavar="N",
                   help="ninja -j for the build (default: the CPU count)")

    s = cmd("boot", help="boot a guest and print how to connect (ssh, gdb)")
    _vm_args(s)
    s.add_argument("--keep", action="store_true", help="keep the guest up until Ctrl-C")

    s = cmd("run-cmd", help="boot, run one guest command over SSH, exit with its status")
    _vm_args(s)
    s.add_argument("--timeout", type=float, default=120.0, help="guest command deadline, s (default 120)")
    s.add_argument("words", metavar="command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")

    s = cmd("probe", help="the main job: toggle the function tracer under load and judge every int3 "
                          "emulation (the ftrace-function scenario)")
    _vm_args(s)
    s.add_argument("--toggles", type=int, default=10, metavar="N", help="enable+disable cycles (default 10)")
    fields(s, RunRequest)
    fields(s, ReproOptions, "function", "min_judged", "json")

    s = cmd("repro", help="run one scenario under the probe and write a JSON verdict")
    s.add_argument("scenario", metavar="SCENARIO", nargs="?", help=SCENARIO_HELP)
    _vm_args(s)
    fields(s, RunRequest)
    fields(s, ReproOptions)

    fields(cmd("bench", help="measure boot times, the probe's cost and kernel builds; write JSON"),
           BenchRequest)

    cmd("scenarios", help="list the scenarios, one line each")

    fields(cmd("build-kernel", help="build a guest kernel from source (+patches) and register it"),
           BuildRequest)

    s = cmd("nightly", help="run the kernel x scenario matrix; write JUnit, JSON and HTML reports")
    fields(s, NightlyRequest)
    s.add_argument("--out", type=PATHS["out-dir"], default="nightly", metavar="DIR", help="default ./nightly")
    fields(s, Reports)
    fields(s, ReproOptions, "format")
    _vm_args(s, kernel=False, ports=False)
    s.add_argument("--dry-run", action="store_true", help="print the cells this run would do and exit")

    s = cmd("merge", help="join nightly shard summaries into one summary, JUnit and HTML")
    s.add_argument("out", type=PATHS["out-dir"], metavar="OUT", help="output dir")
    s.add_argument("summaries", type=PATHS["text"], nargs="+", metavar="SUMMARY",
                   help="shard summary.json files")
    fields(s, Reports)
    fields(s, ReproOptions, "format")

    s = cmd("bisect", help="find the commit (or Debian kernel version) that brought a regression",
            description="Bisect a git kernel tree (--source, --good, --bad: build, boot, run, judge "
                        "each revision) or Debian's prebuilt cloud-amd64 kernels (--debian A..B: fetch, "
                        "boot, run, judge; no builds).")
    s.add_argument("--scenario", required=True, help=SCENARIO_HELP)
    fields(s, BisectRequest)
    _vm_args(s, kernel=False, dry_run="print what the bisect would judge and how, and exit (nothing is "
                                      "built, fetched, booted or written)")
    return p
