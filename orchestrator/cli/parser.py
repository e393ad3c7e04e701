"""The ``pokelab`` argument parser: every command's options, nothing else.

A bad option or path is one ``pokelab: usage:`` line and exit 2 (:class:`Parser`);
paths are checked while parsing (:mod:`orchestrator.host.userpaths`), before anything runs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..core.verdict import EXIT_CODES
from ..host import userpaths as up
from ..run.request import ACCELS, INJECTIONS, MACHINES, TCG_THREADS

SCENARIO_HELP = "a name from `pokelab scenarios`, or a scenario file FILE.toml (docs/scenarios.md)"
FORMAT_HELP = "stdout: text (default) or KTAP v1{} (the text lines go to stderr)"


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


IN_FILE, IN_TEXT, IN_DIR = _path(up.input_file), _path(up.input_file, text=True), _path(up.input_dir)
OUT_DIR, OUT_FILE = _path(up.output_dir), _path(up.output_file)
NEW_FILE = _path(up.output_file, parent="create")  # its directory is made if need be


def _vm_args(p: Any, *, kernel: bool = True, ports: bool = True, dry_run: bool = True) -> None:
    """The kernel and VM options of every command that boots a guest."""
    if kernel:
        o = p.add_argument_group("kernel (default: the catalog's default kernel)").add_argument
        o("--kernel", metavar="ID", help="a catalog id from `pokelab kernels`; a line (7.3: its newest ABI "
          "with -dbg; 7.3-rt-amd64); a Debian ABI (6.1.0-57, 7.3.4+deb13, 6.1.0-57-rt-amd64) or package "
          "(linux-image-7.3.4+deb13-amd64); custom-<id>")
        o("--bzimage", type=IN_FILE, metavar="P", help="your own kernel image (with --vmlinux)")
        o("--vmlinux", type=IN_FILE, metavar="P", help="its debug vmlinux (build-id must match)")
        o("--modules", type=IN_DIR, metavar="DIR",
          help="with --bzimage: its lib/modules/<release> tree (virtio drivers as modules)")
    o = p.add_argument_group("virtual machine").add_argument
    o("--smp", type=int, default=4, metavar="N", help="vCPUs (default 4)")
    o("--memory", type=int, default=1024, metavar="MIB", help="guest RAM (default 1024)")
    o("--accel", default="auto", choices=ACCELS, help="auto: KVM where it was seen to boot a guest, else TCG "
      "(default auto)")
    o("--tcg-thread", default="single", choices=TCG_THREADS,
      help="TCG threading; 'multi' is known unstable for text_poke (default single)")
    o("--machine", default="pc", choices=MACHINES, help="QEMU machine: pc (i440FX, virtio on PCI) or microvm "
      "(no PCI or legacy timers, virtio-mmio found through ACPI; boots faster) (default pc)")
    o("--qemu", type=Path, metavar="PATH", help="this qemu-system-x86_64 (default: the host's if its gdbstub "
      "does not flush translated code at a stop, else the one `pokelab qemu` built)")
    if ports:
        o("--gdb-port", type=int, metavar="PORT", help="gdbstub port on 127.0.0.1")
        o("--ssh-port", type=int, metavar="PORT", help="SSH port on 127.0.0.1")
        o("--artifacts", type=OUT_DIR, metavar="DIR",
          help="artifact dir (default: artifacts/<time>-<command>-<pid>, or $POKELAB_ARTIFACTS)")
    if dry_run:
        o("--dry-run", action="store_true",
          help="print the QEMU command line and exit (nothing is fetched, built or booted)")


def _report_args(s: Any) -> None:
    """The report options nightly and merge share."""
    o = s.add_argument
    o("--previous", type=IN_TEXT, metavar="SUMMARY", help="a previous summary.json to compare with")
    o("--known-issues", type=IN_TEXT, metavar="FILE", help="known flakes (TOML or JSON, docs/nightly.md)")
    o("--kcidb", type=NEW_FILE, metavar="FILE", help="also write KCIDB-style JSON here")
    o("--artifacts-url", metavar="URL",help="where OUT is published: KCIDB output_files URLs are made from "
      "it")
    o("--format", choices=("text", "ktap"), default="text", help=FORMAT_HELP.format(", one test per cell"))


def _run_args(s: Any, *, probe: bool) -> None:
    """What one probed run takes beyond the VM: injection, the floor, a JSON copy."""
    o = s.add_argument
    o("--inject", choices=INJECTIONS, help="corrupt the emulation at chosen CALL traps (wrong-target: JMP32 "
      "ones too; self-test: must end FAIL)")
    o("--inject-every", type=int, default=2, metavar="K",help="inject at every K-th eligible trap (default "
      "2)")
    o("--min-judged", type=int, metavar="N",
      help="the floor: fewer traps judged (at the traced function's site) is INCONCLUSIVE")
    o("--function", default="__do_sys_getpid" if probe else None,help="trace this function instead (the real "
      "symbol); with --trigger: the function whose site is read back and whose traps count to the floor")
    o("--json", type=OUT_FILE, metavar="FILE", help="write the JSON verdict here too")


def build_parser() -> argparse.ArgumentParser:
    """The parser; ``command`` names the subcommand (:func:`.commands.handler` runs it)."""
    p = Parser(prog="pokelab",
               description="Boot a kernel in QEMU, watch its text_poke int3 emulation through GDB, judge it.")
    p.add_argument("--version", action="version", version=f"pokelab {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    cmd = p.add_subparsers(dest="command", metavar="COMMAND", required=True).add_parser

    o = cmd("kernels",help="list the known kernels (catalog and built here) and which are "
            "cached").add_argument
    o("--debian", action="store_true", help="list instead every Debian kernel in pokelab's apt sources, each "
      "line, flavour (cloud-amd64, amd64, rt-amd64) and suite (any with -dbg works as --kernel ABI and as a "
      "`bisect --debian` endpoint)")
    o("--remove", nargs="+", metavar="ID", help="free cache space: delete kernels built here (custom-<id>, "
      "or 'built' for all of them) or fetched Debian kernels (id or ABI; fetched again when next used)")

    o = cmd("images", help="fetch and prepare kernels and initramfs (cached)").add_argument
    o("--kernel", action="append", metavar="ID", help="kernel id, repeatable, or 'all' (default: the default "
      "kernel)")

    o = cmd("qemu",help="make sure a QEMU without the per-stop translation flush is at hand: the host's if "
            "it has none, else build QEMU 10.2 once into the cache").add_argument
    o("-j", "--jobs", type=int, default=os.cpu_count() or 2, metavar="N",
      help="ninja -j for the build (default: the CPU count)")

    s = cmd("boot", help="boot a guest and print how to connect (ssh, gdb)")
    _vm_args(s)
    s.add_argument("--keep", action="store_true", help="keep the guest up until Ctrl-C")

    s = cmd("run-cmd", help="boot, run one guest command over SSH, exit with its status")
    _vm_args(s)
    s.add_argument("--timeout", type=float, default=120.0, help="guest command deadline, s (default 120)")
    s.add_argument("words", metavar="command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")

    s = cmd("probe",help="the main job: toggle the function tracer under load and judge every int3 emulation "
            "(the ftrace-function scenario)")
    _vm_args(s)
    s.add_argument("--toggles", type=int, default=10, metavar="N", help="enable+disable cycles (default 10)")
    _run_args(s, probe=True)

    s = cmd("repro", help="run one scenario under the probe and write a JSON verdict")
    o = s.add_argument
    o("scenario", metavar="SCENARIO", nargs="?", help=SCENARIO_HELP)
    o("--trigger", type=_path(up.input_file_or_dir), metavar="FILE|DIR", help="instead of a scenario: your "
      "trigger (a script, a binary, a .tc file or a dir of .tc files) copied in and run from vCPU 0, the "
      "default load on the others")
    o("--format", choices=("text", "ktap"), default="text", help=FORMAT_HELP.format(""))
    o("--bisect-exit-codes", action="store_true",help="exit as `git bisect run` expects: 0 PASS, 1 "
      "FAIL/CRASH, 125 other verdicts, 128 bad usage (aborts the bisect)")
    _vm_args(s)
    _run_args(s, probe=False)
    o("--workload", type=IN_FILE, metavar="FILE",help="a static binary or script to copy in and run pinned "
      "as the load")
    o("--repeat", type=int, metavar="N", help="cycles of the scenario's steps")
    o("--runs", type=int, metavar="N",
      help="boot and run the scenario N times, each in artifacts/run-I (a failure rate)")
    o("--until-fail", action="store_true", help="with --runs: stop at the first FAIL or CRASH")
    o("--gdb", action="store_true",
      help="at the first violation leave the guest stopped and print the gdb command; Ctrl-C ends it")

    o = cmd("bench", help="measure boot time, probe cost and kernel builds; write flat JSON").add_argument
    o("--out", type=NEW_FILE, default="bench/latest.json", help="default bench/latest.json")
    o("--part", action="append", choices=("vm", "kbuild"),help="run only this part (repeatable; default "
      "both): vm = boots, stops, probe cost; kbuild = cold full build, incremental build, one bisect step "
      "(~12 min). The other part's figures already in --out are kept")
    o("-j", "--jobs", type=int, default=2, metavar="N", help="make -j for kbuild (default 2)")
    o("--boots", type=int, default=5, help="boots for the boot-time median (default 5)")
    o("--stops", type=int, default=100, help="stops for the stop-cost median (default 100)")
    o("--toggles", type=int, default=10, help="probe toggles (default 10)")
    o("--qemu", type=Path, metavar="PATH", help="the QEMU to measure (default: as VM commands)")
    o("--qemu-compare", type=Path, metavar="PATH",help="part vm: measure this second qemu-system-x86_64 in "
      "the same run, alternating with the first; its figures go under 'compare'")

    cmd("scenarios", help="list the scenarios, one line each")

    o = cmd("build-kernel", help="build a guest kernel from source (+patches) and register it").add_argument
    o("--source", type=IN_DIR, metavar="DIR",
      help="kernel tree, plain or git (default: Debian's linux-source-6.1, unpacked once)")
    o("--patches", type=_path(up.input_file_or_dir, text=True), nargs="+", default=[], metavar="DIR|FILE",
      help="patches applied with patch -p1 to a scratch copy, in order (a dir: its *.patch)")
    o("--config-fragment", type=IN_TEXT, nargs="+", default=[], metavar="FILE",
      help="config fragments merged on allnoconfig (default: images/config/*.config)")
    o("--out", type=OUT_DIR, metavar="DIR", help="make O= dir (default: under the cache)")
    o("-j", "--jobs", type=int, default=2, metavar="N", help="make -j (default 2)")

    s = cmd("nightly", help="run the kernel x scenario matrix; write JUnit, JSON and HTML reports")
    o = s.add_argument
    o("--kernels", metavar="A,B", help="kernel ids as --kernel takes them: catalog, custom-*, Debian ABIs "
      "(default: every catalog kernel cached or fetchable)")
    o("--scenarios", metavar="A,B",
      help="scenario names or scenario files FILE.toml (default: every built-in scenario)")
    o("--repeat", type=int, metavar="N", help="cycles of each scenario's steps")
    o("--shard", metavar="I/N", help="run only shard I of N (1-based, deterministic)")
    o("-j", "--jobs", type=int, default=1, metavar="N", help="parallel VMs (default 1)")
    o("--out", type=OUT_DIR, default="nightly", metavar="DIR", help="default ./nightly")
    _report_args(s)
    _vm_args(s, kernel=False, ports=False, dry_run=False)
    o("--dry-run", action="store_true", help="print the cells this run would do and exit")

    s = cmd("merge", help="join nightly shard summaries into one summary, JUnit and HTML")
    s.add_argument("out", type=OUT_DIR, metavar="OUT", help="output dir")
    s.add_argument("summaries", type=IN_TEXT, nargs="+", metavar="SUMMARY", help="shard summary.json files")
    _report_args(s)

    s = cmd("bisect", help="find the commit (or Debian kernel version) that brought a regression",
            description="Bisect a git kernel tree (--source, --good, --bad: build, boot, run, judge each "
                        "revision) or Debian's prebuilt cloud-amd64 kernels (--debian A..B: fetch, boot, "
                        "run, judge; no builds).")
    o = s.add_argument
    o("--source", type=IN_DIR, metavar="DIR",
      help="a git kernel checkout (bisected in a scratch worktree; yours is not touched)")
    o("--good", metavar="REV", help="with --source: a revision the scenario passes on")
    o("--bad", metavar="REV", help="with --source: a revision the scenario fails on")
    o("--debian", metavar="GOOD..BAD", help="bisect the Debian cloud-amd64 kernels apt knows between two "
      "versions, named by ABI (6.1.0-47), release, package version (6.1.170-3) or catalog id (6.1)")
    o("--scenario", required=True, help=SCENARIO_HELP)
    o("--runs", type=int, default=3, metavar="N", help="scenario runs per revision (default 3; good needs "
      "min(N, 3) clean runs and no failure, bad needs min(N, 2) failing runs)")
    o("--log", type=NEW_FILE, metavar="FILE",
      help="JSON-lines bisect log (default: --replay's file, else under the artifacts)")
    o("--replay", type=IN_TEXT, metavar="FILE",help="resume from a bisect log: logged revisions are not run "
      "again")
    o("-j", "--jobs", type=int, default=2, metavar="N", help="make -j with --source (default 2)")
    _vm_args(s, kernel=False, dry_run=False)
    return p
