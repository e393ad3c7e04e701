"""``pokelab bench``: the performance figures, measured on real guests and builds, written as flat JSON.

Two parts: ``vm`` (below) and ``kbuild`` (:mod:`orchestrator.jobs.bench_kbuild`).  A run of every part
writes a new file; a run of some parts keeps the figures the file already has from the others.

Part ``vm`` (all on the default kernel, TCG here, 4 vCPUs unless said; ``kernel``, ``accel``,
``smp``, ``date`` say what and when; ``qemu``, ``qemu_version`` which QEMU, chosen as every VM
command chooses it or given with ``--qemu``).  With ``--qemu-compare PATH`` the same figures of a
second QEMU go under ``compare``, measured in the same run, one QEMU after the other in each
phase (boots alternate one by one, the order rotated each round: :func:`boot_order`), so the
machine's noise hits both:

* ``boot_to_console_marker_s`` / ``boot_to_ssh_s``: median over N boots, from
  QEMU's launch to the init's ``POKELAB-READY`` line / to the first answered
  SSH command, on the default machine (``machine``) and kernel image (the PVH ELF where the
  kernel has one, ``boot_image``); ``boot_cpu_s``: QEMU's CPU time (user + system) at that
  answer, which a loaded host disturbs less than the wall time.
* ``boot_to_console_marker_<M>_s`` / ``boot_to_ssh_<M>_s`` / ``boot_cpu_<M>_s``: the same, same
  kernel, initramfs and QEMU, on the other machine ``M`` (``pc`` or ``microvm``), its boots
  alternating with those above; ``boot_<M>_ratio`` = ``boot_to_ssh_<M>_s`` / ``boot_to_ssh_s``.
* ``boot_to_ssh_bzimage_s`` / ``boot_cpu_bzimage_s`` / ``boot_bzimage_ratio``: the same again on the
  default machine booting the bzImage (through its decompressor), when the default is the PVH ELF.
* ``bare_stop_ms``: a plain GDB breakpoint on a hot function
  (``__x64_sys_getpid`` under the getpid load), stopped and continued over MI:
  median of the wall time per ``-exec-continue`` -> ``*stopped`` cycle.
* ``py_stop_ms``: the same breakpoint handled inside GDB (Python ``stop()``
  returning False): median interval between consecutive hits.

The probe figures come from one run of the ``ftrace-function`` scenario (function tracer on/off on
``__do_sys_getpid``, ``--toggles`` cycles, vCPUs 1.. in getpid) through ``execute(RunRequest(...))``,
with as many ``baseline_cycles``: the same setup, cycles and teardown on the booted guest before GDB
attaches (``verdict.json``'s ``baseline_steps``, each step timed as in ``steps``); its
``verdict.json`` is in ``bench-artifacts/probe/`` (and ``compare/probe/``).

* ``switch_without_probe_s`` / ``switch_with_probe_s``: median host time of one function-tracer
  switch (the scenario's ``tracer-on`` and ``tracer-off`` steps: ``function`` <-> ``nop`` written to
  ``current_tracer`` from vCPU 0, a round trip over SSH) before GDB attaches / under the probe;
  ``probe_overhead`` = with / without (target <= 1.10).
* ``trap_ms``: host cost per inspected trap, measured from outside: (with - without) x switches
  under the probe / traps judged.  This counts everything a trap costs, including what happens
  in QEMU after GDB resumes it (the re-translation after a flush).
* ``trap_inside_ms``: median, over the probe's real traps, of the time from
  handling the entry stop to the end of handling the return stop (GDB-side):
  the part of ``trap_ms`` that GDB's Python sees.
* ``trap_cost_ratio`` = ``trap_ms`` / ``bare_stop_ms`` (target <= 1.5).
* ``stop_py_ms``: mean ms the recorder's Python spends in one breakpoint stop (its reads of the
  guest included; GDB's and QEMU's own work at the stop, and the step over the breakpoint, not);
  ``stop_py_ms_by_hook``: the same per kind of stop (``entry``, ``exit``, ``batch``,
  ``batch-end``, ``poke``, ...), from the recorder's ``hook_ms``.
* ``tb_flushes_per_stop``: QEMU's ``TB flush count`` (HMP ``info jit``) after the
  scenario's steps (setup, cycles, teardown) minus before (what the probe's stops and the
  read-backs' pauses of the guest flushed), per breakpoint hit of the probe in between
  (``probe_stops``: every stop of the recorder's hooks: handler entries and returns, batches
  and their ends, plain writes; each hit is GDB's stop plus its step-over).  Target 0: QEMU
  >= 10.2 does not flush at a debug stop (2 with 7.2 at each stop; 2.48 in a 4-cycle run,
  where the pauses weigh more).
  ``qemu_tb_flushes_per_stop`` is the same measured on single-steps when the binary
  was chosen (:mod:`orchestrator.machine.qemu_binary`).
* ``traps_per_min``: judged traps per wall minute of the probe's cycles (``probe_toggle_s``:
  ``cycles_s`` of the run, its steps with their evidence and read-backs).
  Information only: a slower probe keeps more vCPUs in each int3 window, so it
  rises when the probe gets slower.  ``probe_traps_judged``: the run's judged traps.

Part ``kbuild`` (Debian's linux-source-6.1, default config fragments; definitions in
:mod:`orchestrator.jobs.bench_kbuild`):

* ``kernel_build_full_s`` (``_make_s``: the make alone): a build with an empty ccache and O= dir.
* ``kernel_build_incremental_s`` (``_make_s``): then the same with a one-line patch.
* ``bisect_step_s``: one ``pokelab bisect`` step: another one-line change, an incremental build
  (``bisect_step_build_s``), then ``bisect_step_runs`` runs of ``bisect_step_scenario``, all PASS.
* ``kernel_build_jobs`` (make -j), ``kbuild_release``, ``kbuild_date``.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.errors import InfraError, UsageError
from ..core.fields import option
from ..core.verdict import Verdict
from ..gdb.mi import MiSession, gdb_argv
from ..gdb.probe import GDB_SCRIPT
from ..kernels import loadgen
from ..kernels.images import KernelArtifacts
from ..machine.qemu import MACHINES
from ..machine.qemu_binary import check_given, executable
from ..machine.vm import Vm, VmSpec
from ..run.execute import execute
from ..run.prepare import Prepared, prepare_vm
from ..run.request import KernelChoice, RunRequest, VmOptions
from .bench_kbuild import STEP_RUNS, run_kbuild_bench
from .repro import MAX_CYCLES, MAX_RUNS, probe_scenario

log = logging.getLogger(__name__)

HOT_FUNCTION = "__x64_sys_getpid"
#: the function the probed run's tracer is filtered on (its load calls it on every vCPU but 0)
PROBE_FUNCTION = "__do_sys_getpid"
PARTS = ("vm", "kbuild")


def _boot_once(spec: VmSpec) -> tuple[float, float, float]:
    """(s to the readiness marker, s to the first answered SSH command, QEMU's CPU s then)."""
    with Vm(spec) as vm:
        t0 = time.monotonic()
        vm.start()
        assert vm.console is not None
        m = vm.console.wait_for(r"POKELAB-READY", vm.timeouts.get("boot_marker"), abort=vm.qemu_exited)
        t_marker = time.monotonic() - t0
        if m is None:
            raise InfraError("no readiness marker during the boot benchmark")
        vm.wait_ready()
        vm.check("true")
        t_ssh = time.monotonic() - t0
        cpu = vm.qemu_cpu_seconds()
        if cpu is None:
            raise InfraError("QEMU's CPU time could not be read during the boot benchmark")
        return t_marker, t_ssh, cpu


def boot_order(n: int, round_: int) -> list[int]:
    """The order of ``n`` boot variants in round ``round_`` (0-based): rotated by one each round.

    Back-to-back boots in one process are not alike by position: measured here, of two boots
    in a row the second was 0.2-0.3 s faster whatever it was (a no-op word on the command line
    "gained" 0.29 s; swapped, the gain moved with the position).  Rotating gives every variant
    each position in turn instead of always the same one.
    """
    return [(round_ + k) % n for k in range(n)]


def _stop_costs(spec: VmSpec, kernel: KernelArtifacts, n: int) -> dict[str, float]:
    with Vm(spec) as vm:
        vm.start()
        vm.wait_ready()
        vm.check(loadgen.start_command("getpid", list(range(1, spec.smp)) or [0]))
        mi = MiSession(gdb_argv(kernel.vmlinux), spec.artifacts / "bench-mi.log",
                       vm.timeouts.get("gdb_command"))
        try:
            bench_lines: list[str] = []
            mi.add_console_hook(lambda line: bench_lines.append(line)
                                if line.startswith("POKELAB-BENCH ") else None)
            mi.command("-gdb-set mi-async on")
            start = mi.async_count
            mi.command(f"-target-select remote {vm.gdb_address}")
            mi.wait_async(lambda r: r.get("message") == "stopped", 30.0, start)
            hw = "-h " if spec.accel == "kvm" else ""
            mi.command(f"-break-insert {hw}*&{HOT_FUNCTION}")
            cycles: list[float] = []
            for _ in range(n + 5):
                start = mi.async_count
                t = time.monotonic()
                mi.command("-exec-continue")
                if mi.wait_async(lambda r: r.get("message") == "stopped", 30.0, start) is None:
                    raise InfraError("the hot-function breakpoint stopped hitting")
                cycles.append((time.monotonic() - t) * 1000.0)
            mi.command("-break-delete")
            addr = int(str(mi.command(f'-data-evaluate-expression "(unsigned long)&{HOT_FUNCTION}"')
                           ["payload"]["value"]).split()[0], 0)
            mi.console(f"source {GDB_SCRIPT}")
            mi.console(f"python pokelab_bench_stops({addr}, {n + 1}, {spec.accel == 'kvm'})")
            mi.command("-exec-continue")
            end = time.monotonic() + 60.0
            while not bench_lines and time.monotonic() < end:
                time.sleep(0.05)
            if not bench_lines:
                raise InfraError("the in-GDB breakpoint benchmark did not finish")
            intervals = json.loads(bench_lines[0].split(" ", 1)[1])["intervals_ms"]
        finally:
            mi.close()
        return {"bare_stop_ms": round(statistics.median(cycles[5:]), 3),
                "py_stop_ms": round(statistics.median(intervals), 3)}


def merge_figures(old: dict[str, Any], new: dict[str, Any], complete: bool) -> dict[str, Any]:
    """What to write: every part run replaces the file; some parts run update the old figures."""
    return dict(new) if complete else {**old, **new}


def read_figures(out: Path) -> dict[str, Any]:
    """The figures already in ``out`` ({} if there is no file)."""
    if not out.is_file():
        return {}
    try:
        data = json.loads(out.read_text())
    except ValueError as exc:
        raise UsageError(f"{out} is not a bench JSON file ({exc}): move it away or run every part") from None
    if not isinstance(data, dict):
        raise UsageError(f"{out} is not a bench JSON file (not an object): move it away or run every part")
    return data


def probe_figures(record: Mapping[str, Any], steps: Sequence[str], bare_stop_ms: float) -> dict[str, Any]:
    """The probe figures (module docstring) of the bench's probed run: ``record`` is its
    ``verdict.json`` (:class:`~orchestrator.run.result.RunResult` record, with ``baseline_steps``),
    ``steps`` the names of the scenario's cycle steps whose host seconds are compared.

    Raises InfraError if either side timed none of them or the probe judged no trap.
    """
    def seconds(key: str) -> list[float]:
        return [float(e["s"]) for e in record.get(key) or () if e["step"] in steps]

    without, under = seconds("baseline_steps"), seconds("steps")
    traps = int(record.get("traps_judged") or 0)
    if not without or not under or not traps:
        raise InfraError(f"the bench's probed run timed {len(without)} step(s) without the probe and "
                         f"{len(under)} under it, with {traps} trap(s) judged: no probe figures")
    base, probed = statistics.median(without), statistics.median(under)
    trap_ms = round((probed - base) * len(under) / traps * 1000.0, 3)
    inside = record.get("trap_cost_ms_median")
    hooks = (record.get("recorder") or {}).get("hook_ms") or {}
    hook_stops = sum(int(h.get("stops", 0)) for h in hooks.values())
    hook_ms = sum(float(h.get("ms", 0.0)) for h in hooks.values())
    cycles_s = record.get("cycles_s")
    return {"switch_without_probe_s": round(base, 3), "switch_with_probe_s": round(probed, 3),
            "probe_overhead": round(probed / base, 3), "trap_ms": trap_ms,
            "trap_inside_ms": None if inside is None else round(inside, 3),
            "trap_cost_ratio": round(trap_ms / bare_stop_ms, 3),
            "stop_py_ms": round(hook_ms / hook_stops, 3) if hook_stops else None,
            "stop_py_ms_by_hook": {k: round(float(h["ms"]) / int(h["stops"]), 3)
                                   for k, h in hooks.items() if int(h.get("stops", 0))},
            "tb_flushes_per_stop": record.get("tb_flushes_per_stop"), "tb_flushes": record.get("tb_flushes"),
            "probe_stops": record.get("probe_stops"),
            "traps_per_min": round(traps / cycles_s * 60, 1) if cycles_s else None,
            "probe_traps_judged": traps, "probe_toggle_s": cycles_s}


def _column(spec: VmSpec, kernel: KernelArtifacts, qemu: Path | None, art: Path, stops: int, toggles: int,
            progress: Callable[[str], None]) -> dict[str, Any]:
    """The stop-cost and probe figures of one QEMU (the boot figures are taken apart).

    The probe figures come from one run of the ``ftrace-function`` scenario (``toggles`` cycles on
    :data:`PROBE_FUNCTION`) through :func:`~orchestrator.run.execute.execute`, on ``spec`` (made
    from ``VmOptions(qemu=qemu)``), with as many baseline cycles before the probe attaches.
    """
    name = f"QEMU {spec.qemu.version if spec.qemu else '?'}"
    fig: dict[str, Any] = {}
    costs = _stop_costs(replace(spec, artifacts=art / "stops"), kernel, stops)
    fig.update(costs)
    progress(f"{name}: bare stop {costs['bare_stop_ms']:.2f} ms, in-GDB stop {costs['py_stop_ms']:.2f} ms")
    sc = probe_scenario(toggles, PROBE_FUNCTION, None)
    request = RunRequest(scenario=sc, artifacts=art / "probe", vm=VmOptions(qemu=qemu),
                         baseline_cycles=toggles)
    res = execute(request, prepared=Prepared(replace(spec, artifacts=request.artifacts), kernel),
                  progress=lambda s: progress(f"{name}: {s}"))
    if res.verdict != Verdict.PASS:
        raise InfraError(f"the probe run of the benchmark on {name} ended {res.verdict}: "
                         f"{'; '.join(res.reasons)} (see {request.artifacts})")
    fig.update(probe_figures(res.record, [st.name for st in sc.steps], costs["bare_stop_ms"]))
    progress(f"{name}: trap {fig['trap_ms']:.2f} ms (ratio {fig['trap_cost_ratio']:.2f}), probe overhead "
             f"{fig['probe_overhead']:.2f}, TB flushes per stop {fig['tb_flushes_per_stop']}")
    return fig


def _run_vm(art: Path, boots: int, stops: int, toggles: int,
            progress: Callable[[str], None], qemu: Path | None = None,
            qemu_compare: Path | None = None) -> dict[str, Any]:
    from ..host.cache import cache_dir
    from ..machine import qemu_binary

    extra = {loadgen.GUEST_PATH: loadgen.ensure_loadgen(cache_dir())}
    spec, kernel = prepare_vm(KernelChoice(), VmOptions(qemu=qemu), artifacts=art / "boot", extra_files=extra)
    specs = [spec]
    if qemu_compare is not None:
        other = qemu_binary.select(qemu_compare, cache_dir())
        specs.append(replace(spec, qemu=other, artifacts=art / "compare" / "boot"))
    dirs = [art, art / "compare"]
    cols: list[dict[str, Any]] = [dict(s.qemu_record) for s in specs]
    names = [f"QEMU {c['qemu_version']}" for c in cols]
    # one QEMU after the other in each round, so the machine's noise hits both; then, on the
    # first QEMU, the other machine and (if the default is the PVH ELF) the bzImage
    alt = next(m for m in MACHINES if m != spec.machine)
    variants = [(names[c], s) for c, s in enumerate(specs)]
    variants.append((f"{names[0]} {alt}", replace(spec, machine=alt, artifacts=art / alt / "boot")))
    if spec.kernel_image != kernel.bzimage:
        variants.append((f"{names[0]} bzImage", replace(spec, kernel_image=kernel.bzimage,
                                                        artifacts=art / "bzimage" / "boot")))
    samples: list[list[tuple[float, float, float]]] = [[] for _ in variants]
    for i in range(boots):
        for v in boot_order(len(variants), i):
            name, s = variants[v]
            m, t, cpu = _boot_once(s)
            samples[v].append((m, t, cpu))
            progress(f"{name}: boot {i + 1}/{boots}: marker {m:.2f} s, ssh {t:.2f} s, QEMU CPU {cpu:.2f} s")

    def med(v: int, k: int) -> float:
        return round(statistics.median(x[k] for x in samples[v]), 3)

    for c in range(len(specs)):
        cols[c]["boot_image"] = "pvh" if specs[c].kernel_image != kernel.bzimage else "bzimage"
        cols[c]["boot_to_console_marker_s"] = med(c, 0)
        cols[c]["boot_to_ssh_s"] = med(c, 1)
        cols[c]["boot_cpu_s"] = med(c, 2)
        cols[c]["boot_samples"] = boots
    o = len(specs)
    cols[0][f"boot_to_console_marker_{alt}_s"] = med(o, 0)
    cols[0][f"boot_to_ssh_{alt}_s"] = med(o, 1)
    cols[0][f"boot_cpu_{alt}_s"] = med(o, 2)
    cols[0][f"boot_{alt}_ratio"] = round(med(o, 1) / cols[0]["boot_to_ssh_s"], 3)
    if len(variants) > o + 1:
        cols[0]["boot_to_ssh_bzimage_s"] = med(o + 1, 1)
        cols[0]["boot_cpu_bzimage_s"] = med(o + 1, 2)
        cols[0]["boot_bzimage_ratio"] = round(med(o + 1, 1) / cols[0]["boot_to_ssh_s"], 3)
    for c, s in enumerate(specs):
        cols[c].update(_column(s, kernel, (qemu, qemu_compare)[c], dirs[c], stops, toggles, progress))
    figures: dict[str, Any] = {"kernel": kernel.release, "accel": spec.accel, "smp": spec.smp,
                               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **cols[0]}
    if len(cols) > 1:
        figures["compare"] = cols[1]
    return figures


@dataclass(frozen=True)
class BenchRequest:
    """``pokelab bench``: which parts, how many samples, which QEMU(s), where the figures go."""

    out: Path = field(default=Path("bench/latest.json"), metadata=option(
        "the figures, as flat JSON", metavar="FILE", path="new-file"))
    part: tuple[str, ...] | None = field(default=None, metadata=option(
        "run only this part (repeatable; default both): vm = boots, stops, probe cost; kbuild = cold full "
        "build, incremental build, one bisect step (~12 min). The other part's figures already in --out are "
        "kept", action="append", choices=PARTS))
    jobs: int = field(default=2, metadata=option("make -j for kbuild", flag="-j --jobs", metavar="N",
                                                 type=int))
    boots: int = field(default=5, metadata=option("boots for the boot-time median", metavar="N", type=int))
    stops: int = field(default=100, metadata=option("stops for the stop-cost median", metavar="N", type=int))
    toggles: int = field(default=10, metadata=option("probe toggles", metavar="N", type=int))
    qemu: Path | None = field(default=None, metadata=option(
        "the QEMU to measure (default: as VM commands)", metavar="PATH", type=executable))
    qemu_compare: Path | None = field(default=None, metadata=option(
        "part vm: measure this second qemu-system-x86_64 in the same run, alternating with the first; its "
        "figures go under 'compare'", metavar="PATH", type=executable))


def run_request(req: BenchRequest, progress: Callable[[str], None]) -> dict[str, Any]:
    """:func:`run` for a :class:`BenchRequest` (numbers and ``--qemu`` paths checked first: UsageError)."""
    for name in ("jobs", "boots", "stops", "toggles"):
        if getattr(req, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if req.toggles > MAX_CYCLES:  # as probe --toggles
        raise UsageError(f"--toggles {req.toggles}: from 1 to {MAX_CYCLES}")
    if req.boots > MAX_RUNS:  # a boot each, as repro --runs
        raise UsageError(f"--boots {req.boots}: from 1 to {MAX_RUNS}")
    parts = tuple(dict.fromkeys(req.part or PARTS))
    if req.qemu_compare is not None and "vm" not in parts:
        raise UsageError("--qemu-compare goes with part vm (kbuild measures no QEMU)")
    qemu = check_given(req.qemu) if req.qemu is not None else None
    compare = check_given(req.qemu_compare, "--qemu-compare") if req.qemu_compare is not None else None
    return run(req.out.resolve(), boots=req.boots, stops=req.stops, toggles=req.toggles, progress=progress,
               parts=parts, jobs=req.jobs, qemu=qemu, qemu_compare=compare)


def run(out: Path, boots: int = 5, stops: int = 100, toggles: int = 10,
        progress: Callable[[str], None] = lambda s: None, *, parts: Sequence[str] = PARTS,
        jobs: int = 2, step_runs: int = STEP_RUNS, qemu: Path | None = None,
        qemu_compare: Path | None = None) -> dict[str, Any]:
    """Run ``parts`` (of :data:`PARTS`), write the figures to ``out``, return what was written.

    ``jobs`` is the kernel builds' make -j, ``step_runs`` the bisect step's runs (part kbuild);
    ``qemu`` overrides the QEMU choice, ``qemu_compare`` measures a second one (part vm).
    The file is written after each part, so a later part's failure does not lose an earlier one's.
    """
    if not parts:
        raise UsageError(f"no bench part given: the parts are {', '.join(PARTS)}")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UsageError(f"unknown bench part {', '.join(unknown)}: the parts are {', '.join(PARTS)}")
    complete = set(parts) == set(PARTS)
    old = {} if complete else read_figures(out)  # before the hour of measuring, not after
    art = out.parent / "bench-artifacts"
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "vm": lambda: _run_vm(art, boots, stops, toggles, progress, qemu, qemu_compare),
        "kbuild": lambda: run_kbuild_bench(art / "kbuild", jobs=jobs, runs=step_runs, progress=progress),
    }
    new: dict[str, Any] = {}
    figures = old
    for part in PARTS:
        if part in parts:
            new.update(runners[part]())
            figures = merge_figures(old, new, complete)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures
