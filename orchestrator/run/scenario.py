"""Scenarios: short declarations of a live-patching job, run under the int3 probe.

A :class:`Scenario` says what the kernel must have (``requires``), what load
runs where (``load``), which guest actions patch the kernel (``setup``, then
``steps`` repeated ``repeat`` times, then ``teardown``, all from vCPU 0), what
the text must be at the end (``final_state``) and how many traps at the sites
that matter prove something (``min_traps``).  :func:`run_scenario` runs one on
the shared probed runner (``probe_run.run_probed``) and returns its verdict.

Requirements are strings, checked before any GDB work:

* ``CONFIG_X`` (``=y`` or ``=m``) or ``CONFIG_X=y``: the kernel config on the host
  (``KernelArtifacts.config``; unknown for a user's own build without one);
* ``symbol:NAME``: ``/proc/kallsyms`` in the guest;
* ``tracefs:FILE``: ``test -e /sys/kernel/tracing/FILE`` in the guest;
* ``sysctl:a.b``: ``test -e /proc/sys/a/b`` in the guest;
* ``debugfs:FILE``: ``test -e /sys/kernel/debug/FILE`` in the guest;
* ``sysfs:PATH``: ``test -e /sys/PATH`` in the guest (e.g. ``sysfs:kernel/livepatch``);
* ``module:NAME``: a ``NAME.ko`` under ``/lib/modules/$(uname -r)`` in the guest;
  ``module:pokelab_ops`` / ``module:pokelab_lp`` (``kmod.MODULES``) first builds our
  module on the host (``kmod.ensure_module``) and puts it there (see :func:`guest_files`).

Unmet requirements end UNSUPPORTED with the reason.  Every scenario checks:
traps judged at the watched sites >= ``min_traps`` (else INCONCLUSIVE), no
emulation violation, every patched site read back holds the last text written,
the watched function's fentry site holds a call while registered and the
5-byte NOP after removal, the tracer or handler really ran (each ``evidence``
command printed a count > 0), the load ran, and the console is clean.

No check depends on what the load is (``--workload`` replaces it): evidence is
either system-wide (``/proc/schedstat``) or names ``{call}``, pokelab's own call
of the watched function from vCPU 0 (:data:`CALLERS`).  A check that cannot be
made is INCONCLUSIVE with its reason, never FAIL: evidence that printed no
number, evidence 0 for a function pokelab has no caller for (``--function``),
a user's workload that exited with an error.

In guest commands ``{function}``, ``{tracing}`` and ``{call}`` are replaced by
the scenario's function, the tracefs mount point and the function's caller;
with ``watch_body``, ``{body}`` is the function's first body instruction as
``FUNCTION+OFFSET``.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.budget import DEFAULT as DEFAULT_BUDGET
from ..core.budget import TrapBudget
from ..core.census import STATIC_CALL_FORMS, USERS, static_call_form, static_call_sites
from ..core.errors import InfraError, Unsupported, signal_exception
from ..core.verdict import Verdict
from ..gdb.probe import TextCheck, read_trap_log
from ..kernels import kmod, loadgen
from ..kernels.images import KernelArtifacts
from ..machine.vm import Vm, VmSpec
from .probe_run import BodyResult, Progress, Run, run_probed

log = logging.getLogger(__name__)

TRACING = "/sys/kernel/tracing"
NOP5 = bytes.fromhex("0f1f440000")
ENDBR64 = bytes.fromhex("f30f1efa")
#: the 4 bytes a function's fentry site may follow: ENDBR64, or an ENDBR the kernel sealed
#: (CONFIG_X86_KERNEL_IBT: apply_seal_endbr() writes gen_endbr_poison() over the ENDBR of a
#: function never called indirectly, arch/x86/include/asm/ibt.h): 0x001f0f66 "osp nopl (%rax)"
#: since v5.18 (6.1, 6.12), 0xd6401f0f "nopl -42(%rax)" later, 0x0048b90f "ud1" with IBT_PLUS
ENDBR_FORMS = (ENDBR64, bytes.fromhex("660f1f00"), bytes.fromhex("0f1f40d6"), bytes.fromhex("0fb94800"))
WORKLOAD_GUEST_PATH = "/tmp/pokelab-workload"
DEBUGFS = "/sys/kernel/debug"
REQUIREMENT_KINDS = ("config", "symbol", "tracefs", "sysctl", "module", "debugfs", "sysfs", "offers")
SITE_STATES = ("call", "nop")
#: what a watched body site may be expected to hold (see ``Scenario.watch_body``)
BODY_STATES = ("original", "jmp")

#: a guest shell command, or Python that drives the guest and returns "" when it did what it
#: should, else why not (a check that could not be made: the run is INCONCLUSIVE with it)
GuestAction = str | Callable[[Vm], str]

#: Guest commands that call a function for a moment from vCPU 0, whatever the load is:
#: ``{call}`` in an evidence command.  __do_sys_getpid: getpid(2) (kernel/sys.c).
CALLERS = {"__do_sys_getpid": f"{loadgen.GUEST_PATH} getpid 0.2 > /dev/null 2>&1"}


# --------------------------------------------------------------------------- requirements


@dataclass(frozen=True)
class Requirement:
    kind: str
    name: str
    #: for config: the value wanted ("y", "m"); None accepts y or m
    value: str | None = None

    def __str__(self) -> str:
        if self.kind == "config":
            return self.name + (f"={self.value}" if self.value else "")
        return f"{self.kind}:{self.name}"


_CONFIG_RE = re.compile(r"^(CONFIG_[A-Z0-9_]+)(?:=([ymn]|\S+))?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-/{}]+$")


def parse_requirement(text: str) -> Requirement:
    """``CONFIG_X[=v]``, ``symbol:``, ``tracefs:``, ``sysctl:a.b``, ``module:``, ``sysfs:PATH``, and
    ``offers:DEBUGFS_PATH:WORD`` (the debugfs file lists WORD as a choice, e.g.
    ``offers:sched/preempt:none``: 7.x kernels with PREEMPT_LAZY offer only ``full lazy``).  Pure."""
    text = text.strip()
    m = _CONFIG_RE.match(text)
    if m:
        return Requirement("config", m.group(1), m.group(2))
    kind, sep, name = text.partition(":")
    if not sep or kind not in REQUIREMENT_KINDS or kind == "config":
        raise ValueError(f"bad requirement '{text}' (CONFIG_X[=v], symbol:, tracefs:, sysctl:, module:, "
                         "debugfs:, sysfs:)")
    if kind == "offers":
        path, _, word = name.rpartition(":")
        if not path or not _NAME_RE.match(path) or ".." in path or not re.fullmatch(r"[A-Za-z0-9_]+", word):
            raise ValueError(f"bad requirement '{text}': offers:DEBUGFS_PATH:WORD")
        return Requirement(kind, name)
    if not name or not _NAME_RE.match(name) or ".." in name:
        raise ValueError(f"bad requirement '{text}': the name '{name}' is empty or has odd characters")
    return Requirement(kind, name)


def parse_kconfig(text: str) -> dict[str, str]:
    """{CONFIG_X: value} from a .config; ``# CONFIG_X is not set`` gives "n".  Pure."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$", line)
        if m:
            out[m.group(1)] = "n"
        elif line.startswith("CONFIG_") and "=" in line:
            k, _, v = line.partition("=")
            out[k] = v.strip('"')
    return out


def unmet_config(reqs: Iterable[Requirement], config: dict[str, str]) -> list[str]:
    """Reasons for each config requirement the kernel config does not meet.  Pure."""
    out = []
    for r in reqs:
        if r.kind != "config":
            continue
        have = config.get(r.name, "n")
        ok = have in ("y", "m") if r.value is None else have == r.value
        if not ok:
            out.append(f"{r.name} is {'not set' if have == 'n' else have}"
                       f" (need {r.value or 'y or m'})")
    return out


def guest_check_script(reqs: Iterable[Requirement]) -> str:
    """One guest shell command printing ``MISSING <requirement>`` per unmet guest-side requirement."""
    tests = []
    for r in reqs:
        q = shlex.quote(str(r))
        if r.kind == "symbol":
            t = f"grep -q ' {r.name}$' /proc/kallsyms"
        elif r.kind == "tracefs":
            t = f"test -e {TRACING}/{r.name}"
        elif r.kind == "debugfs":
            t = f"test -e {DEBUGFS}/{r.name}"
        elif r.kind == "sysctl":
            t = f"test -e /proc/sys/{r.name.replace('.', '/')}"
        elif r.kind == "sysfs":
            t = f"test -e /sys/{r.name}"
        elif r.kind == "offers":
            path, _, word = r.name.rpartition(":")
            t = f"grep -qw {shlex.quote(word)} {DEBUGFS}/{path}"
        elif r.kind == "module":
            t = f"find /lib/modules/$(uname -r) -name {shlex.quote(r.name + '.ko')} | grep -q ."
        else:
            continue
        tests.append(f"{{ {t}; }} || echo MISSING {q}")
    return "; ".join(tests) + ("; true" if tests else "true")


def parse_missing(output: str) -> list[str]:
    """The requirements a ``guest_check_script`` run reported missing.  Pure."""
    return [line.split(" ", 1)[1].strip() for line in output.splitlines()
            if line.startswith("MISSING ") and line.split(" ", 1)[1].strip()]


def module_guest_path(release: str, name: str = kmod.NAME) -> str:
    """Where our module goes in the guest (found by the ``module:`` check, insmod'ed by path)."""
    return f"/lib/modules/{release}/extra/{name}.ko"


def guest_files(sc: Scenario, kernel: KernelArtifacts, cache: Path) -> dict[str, Path]:
    """Kernel-dependent files the scenario needs in the initramfs: our modules (``kmod.MODULES``) it requires.

    Unsupported when a module cannot be built for this kernel; InfraError if the build fails.
    """
    if sc.unsupported:
        return {}
    return {module_guest_path(kernel.release, r.name): kmod.ensure_module(kernel, cache, r.name)
            for r in sc.requirements() if r.kind == "module" and r.name in kmod.MODULES}


def present_requirements(vm: Vm, reqs: list[Requirement]) -> list[bool]:
    """For each guest-side requirement: is it met in the guest (config ones: False)."""
    missing = set(parse_missing(vm.check(guest_check_script(reqs))))
    return [r.kind != "config" and str(r) not in missing for r in reqs]


def parse_kallsyms_address(output: str) -> int | None:
    """The address in ``awk '$3 == NAME {print $1}' /proc/kallsyms`` output (None if none or 0).  Pure."""
    m = re.search(r"^([0-9a-fA-F]{8,16})\s*$", output, re.M)
    return (int(m.group(1), 16) or None) if m else None


def _guest_symbol(vm: Vm, name: str) -> int | None:
    """A symbol's address from the guest's /proc/kallsyms (module symbols too)."""
    res = vm.run(f"awk '$3 == \"{name}\" {{print $1; exit}}' /proc/kallsyms")
    return parse_kallsyms_address(res.stdout)


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Load:
    """The load pinned on every vCPU but 0: a loadgen path (``getpid``, ``read``, ``yield``).

    ``max_cpus``: load at most that many vCPUs (1..), leaving the others idle;
    ``pace``: let each load sleep now and then.  Every text_poke_bp waits three
    times for all CPUs to take an IPI, and under single-threaded TCG a busy vCPU
    answers only at its next turn (measured on 6.1: a PREEMPT_DYNAMIC switch,
    ~3,000 one-site batches, 1.3 s idle, 88 s with one vCPU in a read loop).
    """

    path: str = "getpid"
    max_cpus: int | None = None
    #: (N, US): each loadgen sleeps US microseconds after every N iterations
    pace: tuple[int, int] | None = None

    def cpus(self, smp: int) -> list[int]:
        cpus = list(range(1, smp)) or [0]
        return cpus[:self.max_cpus] if self.max_cpus else cpus


@dataclass(frozen=True)
class Step:
    """One guest action from vCPU 0, then checks.

    ``site``: what the watched function's fentry site must hold afterwards
    ("call" or "nop"; "any": read back and recorded, not judged).  ``evidence``: a
    guest command, run right after the action, printing a count that must be > 0
    over the run (the handler ran); it must not depend on the load: system-wide
    counts, or ``{call}`` first.
    ``target``: with ``site="call"``, the symbol (looked up in the guest's
    ``/proc/kallsyms``: it may be a module's) the call must reach.  ``body``:
    with ``Scenario.watch_body``, what the watched body site must hold
    afterwards (one of BODY_STATES).
    ``static_calls``: (name, form) pairs: the ``__SCT__<name>`` trampoline and
    every inline site, read from guest memory after the step, must be in that
    form (``census.STATIC_CALL_FORMS``: ``func``, ``ret0``, ``null``;
    ``func:SYMBOL`` also names the function they must call).
    """

    name: str
    action: GuestAction
    site: str | None = None
    evidence: str | None = None
    target: str | None = None
    static_calls: tuple[tuple[str, str], ...] = ()
    body: str | None = None


@dataclass(frozen=True)
class FinalState:
    #: the watched function's fentry site after the teardown ("nop", "call" or None)
    site: str | None = "nop"
    #: (guest command, regex its stdout must match)
    checks: tuple[tuple[str, str], ...] = ()
    #: the watched body site at the end (``Scenario.watch_body``): one of BODY_STATES or None
    body: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    requires: tuple[str, ...] = ()
    load: Load = field(default_factory=Load)
    steps: tuple[Step, ...] = ()
    final_state: FinalState = field(default_factory=FinalState)
    #: floor on traps judged at the watched sites (below it: INCONCLUSIVE)
    min_traps: int = 1
    #: the traced function: its fentry site is watched and the floor counted there
    function: str | None = "__do_sys_getpid"
    #: count the floor inside these whole functions instead (static-key sites)
    floor_functions: tuple[str, ...] = ()
    #: False: the recorder does not stop at each text_poke batch (a PREEMPT_DYNAMIC switch
    #: writes thousands of one-site batches; under QEMU 7.2 each stop costs ~80 ms); the
    #: probe's own read-back is then off (a trap shows one write, not the last one): the
    #: steps' checks (``static_calls``) must read back what they patch
    record_batches: bool = True
    #: or count traps the census attributes to these ``user:key`` pairs
    #: (e.g. ``static_call:cond_resched``; a bare ``user`` takes any key)
    floor_keys: tuple[str, ...] = ()
    #: count the floor over every judged trap, wherever (a tight trap budget may never watch
    #: the batch that patches the function's own site)
    floor_anywhere: bool = False
    setup: tuple[Step, ...] = ()
    teardown: tuple[Step, ...] = ()
    repeat: int = 2
    #: set when this version cannot run the scenario at all: the UNSUPPORTED reason
    unsupported: str | None = None
    #: the probe's per-batch trap budget (heavy patching needs a tighter one)
    budget: TrapBudget = DEFAULT_BUDGET
    #: also watch the function's first body instruction (right after its 5-byte fentry
    #: call): its bytes are read before the setup, each step's ``body`` is checked by
    #: reading it back (plain ``text_poke()`` writes, e.g. kprobe arm/disarm and
    #: unoptimize, are not in the recorder's batches), and the floor is counted there
    watch_body: bool = False
    #: (guest-side requirement, reason): UNSUPPORTED with the reason when the guest MEETS it
    #: (a kernel feature that makes the run impractical under the probe, not a missing one)
    unsupported_if: tuple[tuple[str, str], ...] = ()

    def requirements(self) -> list[Requirement]:
        return [parse_requirement(self.expand(r)) for r in self.requires]

    def expand(self, text: str) -> str:
        return (text.replace("{call}", CALLERS.get(self.function or "", "true"))
                .replace("{function}", self.function or "").replace("{tracing}", TRACING))

    def floor_what(self) -> str:
        if self.watch_body:
            return f"trap(s) judged at {self.function}'s first body instruction"
        if self.floor_keys:
            return f"trap(s) judged at {', '.join(self.floor_keys)} sites"
        if self.floor_anywhere:
            return "trap(s) judged (any site)"
        if self.function is None and not self.floor_functions:
            return "trap(s) judged"
        if self.floor_functions:
            return f"trap(s) judged in {', '.join(self.floor_functions)}"
        return f"trap(s) judged at {self.function}'s site"


def validate(s: Scenario) -> list[str]:
    """Problems with one declaration (empty list: fine).  Pure."""
    probs = []
    if not re.match(r"^[a-z0-9][a-z0-9-]*$", s.name):
        probs.append(f"name '{s.name}': use lower-case letters, digits and dashes")
    if not s.description or "\n" in s.description or len(s.description) > 100:
        probs.append(f"{s.name}: the description must be one line of at most 100 characters")
    try:
        s.requirements()
        for text, why in s.unsupported_if:
            if parse_requirement(s.expand(text)).kind == "config" or not why:
                probs.append(f"{s.name}: unsupported_if '{text}' needs a guest-side requirement and a reason")
    except ValueError as exc:
        probs.append(f"{s.name}: {exc}")
    if s.unsupported is None:
        if not s.steps:
            probs.append(f"{s.name}: no steps")
        if s.min_traps < 1:
            probs.append(f"{s.name}: min_traps must be >= 1 (0 traps prove nothing)")
        if s.repeat < 1:
            probs.append(f"{s.name}: repeat must be >= 1")
        if s.function is None and not s.floor_functions and not s.floor_keys:
            probs.append(f"{s.name}: neither a function nor floor_functions: where is the floor counted?")
        if s.load.path not in ("getpid", "read", "yield"):
            probs.append(f"{s.name}: unknown load path '{s.load.path}'")
    for st in (*s.setup, *s.steps, *s.teardown):
        if st.site is not None and st.site not in SITE_STATES:
            probs.append(f"{s.name}/{st.name}: site must be one of {SITE_STATES}")
        if st.site is not None and s.function is None:
            probs.append(f"{s.name}/{st.name}: a site expectation needs a function")
        if st.evidence and "{call}" in st.evidence and s.function is None:
            probs.append(f"{s.name}/{st.name}: evidence with {{call}} needs a function")
        if st.target is not None and (st.site != "call" or not _NAME_RE.match(st.target)):
            probs.append(f"{s.name}/{st.name}: a call target needs site='call' and a plain symbol name")
        if st.body is not None and (st.body not in BODY_STATES or not s.watch_body):
            probs.append(f"{s.name}/{st.name}: body must be one of {BODY_STATES}, with watch_body")
        for sc_name, spec in st.static_calls:
            form, sep, fn = spec.partition(":")
            if (form not in STATIC_CALL_FORMS or not _NAME_RE.match(sc_name)
                    or (sep and (form != "func" or not _NAME_RE.match(fn)))):
                probs.append(f"{s.name}/{st.name}: static call {sc_name!r}: form must be one of "
                             f"{STATIC_CALL_FORMS} (func:SYMBOL names the function)")
    if not s.record_batches and not any(st.static_calls for st in s.steps):
        probs.append(f"{s.name}: without batch recording the steps must read back what they patch "
                     "(static_calls)")
    for key in s.floor_keys:
        if key.partition(":")[0] not in USERS:
            probs.append(f"{s.name}: floor key {key!r}: the user must be one of {USERS}")
    if s.final_state.body is not None and (s.final_state.body not in BODY_STATES or not s.watch_body):
        probs.append(f"{s.name}: final body must be one of {BODY_STATES}, with watch_body")
    if s.watch_body and s.function is None:
        probs.append(f"{s.name}: watch_body needs a function")
    if s.final_state.site is not None and s.final_state.site not in SITE_STATES:
        probs.append(f"{s.name}: final site must be one of {SITE_STATES}")
    if s.final_state.site is not None and s.function is None and s.unsupported is None:
        probs.append(f"{s.name}: a final site expectation needs a function")
    for _cmd, rx in s.final_state.checks:
        try:
            re.compile(rx)
        except re.error as exc:
            probs.append(f"{s.name}: bad final-state regex {rx!r}: {exc}")
    return probs


# --------------------------------------------------------------------------- running


def classify_fentry(text: bytes) -> tuple[int, str]:
    """(offset of the fentry site in the function, "nop"|"call"|"other") from its first 9 bytes."""
    off = 4 if text[:4] in ENDBR_FORMS else 0
    site = text[off:off + 5]
    if site == NOP5:
        return off, "nop"
    if site[:1] == b"\xe8":
        return off, "call"
    return off, "other"


class _ScenarioBody:
    """The scenario's part of a probed run (``probe_run.Body``)."""

    def __init__(self, sc: Scenario, workload: Path | None, out: dict[str, Any]) -> None:
        self.sc = sc
        self.workload = workload
        self.out = out
        self.failed: list[str] = []
        #: checks that could not be made (INCONCLUSIVE), with the reason
        self.unknown: list[str] = []
        self.evidence: dict[str, int] = {}
        #: steps whose evidence printed no number at least once: why
        self.evidence_missing: dict[str, str] = {}
        self.evidence_steps: dict[str, Step] = {}
        self.step_log: list[dict[str, Any]] = []
        out["steps"] = self.step_log
        out["evidence"] = self.evidence
        #: the watched body site: (address, "FUNCTION+OFFSET", its bytes before the setup)
        self.body: tuple[int, str, bytes] | None = None

    def expand(self, text: str) -> str:
        text = self.sc.expand(text)
        return text.replace("{body}", self.body[1]) if self.body else text

    def __call__(self, run: Run) -> BodyResult:
        sc, vm = self.sc, run.vm
        cpus = sc.load.cpus(run.spec.smp)
        if not sc.record_batches:
            self.out["batch_recording"] = "off" if run.probe.record_batches(False) else "no hook"
        if sc.watch_body:
            self._find_body(run)
        self._start_load(vm, cpus)
        try:
            for st in sc.setup:
                self._step(run, st, 0)
            for rep in range(sc.repeat):
                t = time.monotonic()
                for st in sc.steps:
                    self._step(run, st, rep)
                run.progress(f"cycle {rep + 1}/{sc.repeat} in {time.monotonic() - t:.1f} s: "
                             f"{run.probe.judged_count()} traps judged")
            for st in sc.teardown:
                self._step(run, st, 0)
        except BaseException as exc:
            if signal_exception(exc) is None:  # SIGINT/SIGTERM: the VM is closed next; a guest
                self._stop_load(vm, cpus)      # command could only delay that
            raise
        load_ok, load_info = self._stop_load(vm, cpus)
        self.out["load"] = load_info
        self._final(run)
        floor = self._floor(run)
        self.out["floor_traps"] = floor
        if floor is not None and floor >= sc.min_traps:
            self._judge_evidence(floor)
        return BodyResult(load_ok=load_ok, floor_count=floor, floor_what=sc.floor_what(),
                          failed_checks=self.failed, unknown_checks=self.unknown)

    def _judge_evidence(self, floor: int) -> None:
        """Evidence 0 is a FAIL only when the handler had to run whatever the load was."""
        fn = self.sc.function or ""
        for name, n in self.evidence.items():
            if n > 0:
                continue
            if name in self.evidence_missing:
                self.unknown.append(f"step '{name}': its evidence could not be read "
                                    f"({self.evidence_missing[name]})")
            elif "{call}" in str(self.evidence_steps[name].evidence) and fn not in CALLERS:
                self.unknown.append(f"step '{name}': the tracer/handler recorded nothing (evidence 0), "
                                    f"and pokelab has no command that calls {fn}: whether it ran "
                                    f"is unknown (the load may not call it)")
            else:
                self.failed.append(f"step '{name}': the tracer/handler recorded nothing "
                                   f"(evidence count 0) though its sites trapped {floor} time(s)")

    # -- load ---------------------------------------------------------------------
    def _start_load(self, vm: Vm, cpus: list[int]) -> None:
        if self.workload is None:
            vm.check(loadgen.start_command(self.sc.load.path, cpus, pace=self.sc.load.pace))
            return
        vm.ssh.put_file(self.workload, WORKLOAD_GUEST_PATH)
        vm.check(workload_start_command(cpus))

    def _stop_load(self, vm: Vm, cpus: list[int]) -> tuple[bool, dict[str, Any]]:
        if self.workload is None:
            counts = loadgen.parse_counts(vm.check(loadgen.STOP_COMMAND))
            return (all(counts.get(c, 0) > 0 for c in cpus),
                    {"path": self.sc.load.path, "iterations": {str(k): v for k, v in sorted(counts.items())}})
        states = parse_workload_states(vm.run(WORKLOAD_STOP_COMMAND).stdout)
        alive = sum(1 for c in cpus if states.get(c) == "running")
        for c in cpus:
            state = states.get(c)
            if state is None:
                self.unknown.append(f"the workload's state on vCPU {c} is unknown (not started?)")
            elif state not in ("running", "exit 0"):
                self.unknown.append(f"the workload {state} on vCPU {c}: "
                                    f"see /tmp/workload.{c}.out in the guest")
        # a workload that ended with status 0 ran: a finite script is a fine load
        return True, {"workload": str(self.workload), "still_running_at_end": alive, "cpus": cpus,
                      "states": {str(c): states.get(c) for c in cpus}}

    # -- steps ----------------------------------------------------------------------
    def _step(self, run: Run, st: Step, rep: int) -> None:
        vm = run.vm
        t = time.monotonic()
        if isinstance(st.action, str):
            cmd = self.expand(st.action)
            res = vm.run(f"taskset -c 0 sh -c {shlex.quote(cmd)}")
            if res.status != 0:
                run.check_alive(f"running step '{st.name}'")
                raise InfraError(f"step '{st.name}' failed ({res.status}): {cmd}: "
                                 f"{(res.stderr or res.stdout).strip()[-200:]}")
        else:
            not_done = st.action(vm)
            if not_done:
                self.unknown.append(f"step '{st.name}': {not_done}")
        entry: dict[str, Any] = {"step": st.name, "cycle": rep, "s": round(time.monotonic() - t, 3)}
        if st.evidence:
            res = vm.run(f"taskset -c 0 sh -c {shlex.quote(self.expand(st.evidence))}")
            m = re.search(r"-?\d+", res.stdout)
            n = int(m.group(0)) if m else 0
            if m is None:
                why = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
                self.evidence_missing[st.name] = f"printed no count, exit {res.status}: {why[0][:120]}"
            entry["evidence"] = n if m else None
            self.evidence[st.name] = self.evidence.get(st.name, 0) + n
            self.evidence_steps[st.name] = st
        run.probe.check_sites()
        run.check_alive(f"running step '{st.name}'")
        if st.static_calls:
            entry["static_calls"] = self._check_static_calls(run, st)
        if st.site:
            entry["site"] = self._check_fentry(run, st.site, f"after '{st.name}'", st.target)
        if st.body:
            entry["body"] = self._check_body(run, st.body, f"after '{st.name}'")
        self.step_log.append(entry)

    def _find_body(self, run: Run) -> None:
        fn = self.sc.function or ""
        addr = run.sym.by_name.get(fn)
        if addr is None:
            raise InfraError(f"no symbol {fn} to find its first body instruction")
        with run.probe.paused():
            head = run.probe.read_memory(addr, 9)
            off, state = classify_fentry(head)
            if state != "nop":
                raise InfraError(f"{fn}'s fentry site holds {head[off:off + 5].hex(' ')} before the setup "
                                 "(expected the 5-byte NOP): cannot place the body site")
            site = addr + off + 5
            orig = run.probe.read_memory(site, 5)
        self.body = (site, f"{fn}+{off + 5}", orig)
        self.out["body_site"] = {"address": f"{site:#x}", "spec": self.body[1], "original": orig.hex(" ")}

    def _check_body(self, run: Run, want: str, when: str) -> str:
        """Read the watched body site back: the original bytes, or a JMP32 out of the function."""
        assert self.body is not None
        site, spec, orig = self.body
        with run.probe.paused():
            now = run.probe.read_memory(site, 5)
        desc = f"{spec}: {now.hex(' ')}"
        rng = run.function_range(self.sc.function or "")
        dest: int | None = None
        if now[:1] == b"\xe9":
            dest = site + 5 + int.from_bytes(now[1:5], "little", signed=True)
            desc += f" (jmp {run.sym(dest) or hex(dest)})"
        if want == "original" and now != orig:
            self.failed.append(f"{when}: {spec} holds {now.hex(' ')}, expected its original bytes "
                               f"{orig.hex(' ')}")
        elif want == "jmp":
            inside = rng is not None and dest is not None and rng[0] <= dest < rng[1]
            if dest is None or inside:
                self.failed.append(f"{when}: {spec} holds {now.hex(' ')}, expected a JMP32 (e9) out of "
                                   f"{self.sc.function} (an optprobe detour)")
            elif dest is not None and run.sym(dest) is None:
                self._name_optinsn_page(run, dest)
        return desc

    @staticmethod
    def _name_optinsn_page(run: Run, dest: int) -> None:
        """Name the detour's page if the guest's kallsyms lists it as ``kprobe_optinsn_page``
        (kernel/kprobes.c kprobe_cache_get_kallsym), so traps jumping there are the census's kprobe's."""
        res = run.vm.run("awk '$3 == \"kprobe_optinsn_page\" {print $1}' /proc/kallsyms")
        for word in res.stdout.split():
            page = parse_kallsyms_address(word)
            if page is not None and page <= dest < page + 4096:
                run.sym.add_region("kprobe_optinsn_page", page, 4096)
                return

    def _check_fentry(self, run: Run, want: str, when: str, target: str | None = None) -> str:
        fn = self.sc.function
        addr = run.sym.by_name.get(fn or "")
        if fn is None or addr is None:
            self.failed.append(f"{when}: no symbol {fn} to read its fentry site")
            return "?"
        want_target = _guest_symbol(run.vm, target) if target else None
        with run.probe.paused():
            text = run.probe.read_memory(addr, 9)
        off, state = classify_fentry(text)
        site = text[off:off + 5]
        desc = f"{fn}+{off:#x}: {site.hex(' ')}"
        if state == "call":
            dest = addr + off + 5 + int.from_bytes(site[1:5], "little", signed=True)
            name = target if want_target is not None and dest == want_target else run.sym(dest)
            desc += f" (call {name or hex(dest)})"
            if target and dest != want_target:
                self.failed.append(f"{when}: {fn}'s fentry site calls {name or hex(dest)}, expected "
                                   f"{target} ({hex(want_target) if want_target else 'not in kallsyms'})")
        if want != "any" and state != want:
            expect = "the 5-byte NOP 0f 1f 44 00 00" if want == "nop" else "a call (e8)"
            self.failed.append(f"{when}: {fn}'s fentry site holds {site.hex(' ')}, expected {expect}")
        return desc

    def _check_static_calls(self, run: Run, st: Step) -> dict[str, str]:
        """Read back each static call's ``__SCT__`` trampoline and every inline site (from the census
        tables): each must hold the form the step expects, and a ``func`` form one same function."""
        by_name = run.sym.by_name
        return0 = by_name.get("__static_call_return0")
        thunk = by_name.get("__x86_return_thunk")
        tables = run.probe.census.tables
        plan: list[tuple[str, str, list[int]]] = []
        for name, spec in st.static_calls:
            want = spec.partition(":")[0]
            tramp = by_name.get(f"__SCT__{name}")
            if tramp is None:
                self.failed.append(f"after '{st.name}': no trampoline __SCT__{name} in the vmlinux")
                continue
            plan.append((name, spec, [tramp, *static_call_sites(tables, name)]))
        with run.probe.paused():
            texts = run.probe.read_many([(a, 5) for _n, _w, addrs in plan for a in addrs])
        seen: dict[str, str] = {}
        i = 0
        for name, spec, addrs in plan:
            want, _, func = spec.partition(":")
            forms: dict[str, int] = {}
            targets: set[int] = set()
            bad: list[str] = []
            matched: list[TextCheck] = []
            for k, addr in enumerate(addrs):
                text = texts[i + k] or b""
                form, target = static_call_form(text, addr, return0, thunk)
                forms[form] = forms.get(form, 0) + 1
                if form == want:
                    matched.append(TextCheck(addr, name, True, f"static call {name}: {form}", text.hex()))
                if form == "func" and target is not None:
                    targets.add(target)
                if form != want and len(bad) < 3:
                    where = "__SCT__" + name if k == 0 else (run.sym(addr) or hex(addr))
                    bad.append(f"{where} holds {text.hex(' ') or 'unreadable'} ({form})")
            i += len(addrs)
            run.probe.note_checks(matched)
            shown = ", ".join(f"{f} x{n}" for f, n in forms.items())
            fn = ", ".join(run.sym(t) or hex(t) for t in sorted(targets))
            seen[name] = f"trampoline + {len(addrs) - 1} sites: {shown}" + (f" -> {fn}" if fn else "")
            if bad:
                self.failed.append(f"after '{st.name}': static call {name} should be in the {want} form "
                                   f"everywhere ({shown}): " + "; ".join(bad))
            elif len(targets) > 1:
                self.failed.append(f"after '{st.name}': static call {name} calls different functions: {fn}")
            elif func and targets != {by_name.get(func)}:
                self.failed.append(f"after '{st.name}': static call {name} calls {fn or 'nothing'}, "
                                   f"expected {func}")
        return seen

    def _final(self, run: Run) -> None:
        fs = self.sc.final_state
        if fs.site:
            self.out["final_site"] = self._check_fentry(run, fs.site, "at the end")
        if fs.body and self.body:
            self.out["final_body"] = self._check_body(run, fs.body, "at the end")
        for cmd, rx in fs.checks:
            res = run.vm.run(self.expand(cmd))
            if not re.search(rx, res.stdout):
                self.failed.append(f"final state: `{self.expand(cmd)}` printed "
                                   f"{res.stdout.strip()[:80]!r}, expected /{rx}/")

    def _floor(self, run: Run) -> int | None:
        sc = self.sc
        if self.body is not None:
            return run.traps_in([(self.body[0], self.body[0] + 5)])
        if sc.floor_keys:
            return count_keys(read_trap_log(run.probe.trap_log_path), sc.floor_keys)
        if sc.floor_anywhere:
            return run.probe.judged_count()
        if sc.floor_functions:
            ranges = [r for r in (run.function_range(f) for f in sc.floor_functions) if r]
            if not ranges:
                return None
            return run.traps_in(ranges)
        rng = run.function_range(sc.function or "")
        if rng is None:
            return None
        return run.traps_in([(rng[0], rng[0] + 16)])


def workload_start_command(cpus: list[int]) -> str:
    """Start the user's workload pinned on each CPU; a waiter keeps its exit status.

    Writes ``/tmp/workload.pids`` (``CPU PID`` lines) and, when a copy ends,
    ``/tmp/workload.CPU.rc``.  Made executable first (a script copied as 0644 still runs).
    """
    w = WORKLOAD_GUEST_PATH
    parts = [f"( taskset -c {c} {w} > /tmp/workload.{c}.out 2>&1 & p=$!; "
             f"echo '{c} '$p >> /tmp/workload.pids; wait $p; echo $? > /tmp/workload.{c}.rc ) "
             f"> /dev/null 2>&1 &" for c in cpus]
    return f"rm -f /tmp/workload.pids /tmp/workload.*.rc; chmod +x {w}; " + " ".join(parts) + " true"


#: each copy's state (``workload cpu=C running`` or ``workload cpu=C exit=N``), then TERM to those running
WORKLOAD_STOP_COMMAND = (
    "while read c p; do if kill -0 $p 2>/dev/null; then echo workload cpu=$c running; else "
    "echo workload cpu=$c exit=$(cat /tmp/workload.$c.rc 2>/dev/null || "
    "{ sleep 0.5; cat /tmp/workload.$c.rc 2>/dev/null; } || echo '?'); fi; done < /tmp/workload.pids; "
    "while read c p; do kill -TERM $p 2>/dev/null; done < /tmp/workload.pids; true")


def parse_workload_states(text: str) -> dict[int, str]:
    """{cpu: "running" | "exit N" | "exit ?"} from WORKLOAD_STOP_COMMAND's output.  Pure."""
    out: dict[int, str] = {}
    for m in re.finditer(r"^workload cpu=(\d+) (running|exit=(\S+))\s*$", text, re.M):
        out[int(m.group(1))] = "running" if m.group(2) == "running" else f"exit {m.group(3)}"
    return out


def count_keys(records: Iterable[dict[str, Any]], keys: Iterable[str]) -> int:
    """Judged (not skipped) traps whose census ``user`` (and ``user_key``) match one of ``keys``.  Pure."""
    want = [k.partition(":") for k in keys]
    n = 0
    for rec in records:
        if rec.get("kind") != "judged" or rec.get("verdict") == "skipped":
            continue
        u, k = rec.get("user"), rec.get("user_key")
        n += any(u == wu and (not sep or k == wk) for wu, sep, wk in want)
    return n


def _write(spec: VmSpec, out: dict[str, Any]) -> dict[str, Any]:
    spec.artifacts.mkdir(parents=True, exist_ok=True)
    out.setdefault("traps_judged", 0)
    out.setdefault("violations", 0)
    (spec.artifacts / "verdict.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def run_scenario(spec: VmSpec, kernel: KernelArtifacts, scenario: Scenario, inject: str | None = None,
                 workload: Path | None = None, *, inject_every: int = 2,
                 progress: Progress = lambda s: None,
                 hold: Callable[[Run], None] | None = None,
                 info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one scenario on one kernel; always a dict with ``verdict`` and ``reasons``.

    ``info``: more keys for the verdict (its values may be filled in during the run, e.g.
    a trigger's results).  RunInterrupted (SIGINT/SIGTERM) is raised after the verdict is written.
    """
    sc = scenario
    out: dict[str, Any] = {"scenario": sc.name, "description": sc.description,
                           "function": sc.function, "repeat": sc.repeat, "min_traps": sc.min_traps,
                           "workload": str(workload) if workload else None, **(info or {})}
    base = {"kernel": kernel.release, "kernel_id": kernel.id, **spec.qemu_record, "inject": inject,
            "artifacts": str(spec.artifacts)}
    if sc.unsupported:
        return _write(spec, {**out, **base, "verdict": Verdict.UNSUPPORTED, "reasons": [sc.unsupported]})
    try:
        reqs = sc.requirements()
    except ValueError as exc:
        return _write(spec, {**out, **base, "verdict": Verdict.INFRA, "reasons": [str(exc)]})
    out["requires"] = [str(r) for r in reqs]
    if any(r.kind == "config" for r in reqs):
        if kernel.config is not None and kernel.config.is_file():
            unmet = unmet_config(reqs, parse_kconfig(kernel.config.read_text(errors="replace")))
            if unmet:
                return _write(spec, {**out, **base, "verdict": Verdict.UNSUPPORTED,
                                     "reasons": ["kernel config: " + "; ".join(unmet)]})
        else:
            out["notes"] = ["no kernel config for this kernel: config requirements not checked"]

    def pre_attach(vm: Vm) -> None:
        missing = parse_missing(vm.check(guest_check_script(reqs)))
        if missing:
            raise Unsupported("missing in the guest: " + ", ".join(missing))
        if sc.unsupported_if:
            conds = [parse_requirement(sc.expand(r)) for r, _ in sc.unsupported_if]
            for (text, why), met in zip(sc.unsupported_if, present_requirements(vm, conds), strict=True):
                if met:
                    raise Unsupported(f"{sc.expand(text)}: {why}")

    body = _ScenarioBody(sc, workload, out)
    return run_probed(spec, kernel, out, body, inject=inject, inject_every=inject_every,
                      min_judged=sc.min_traps, pre_attach=pre_attach, progress=progress, hold=hold,
                      budget=sc.budget)


def with_options(sc: Scenario, *, repeat: int | None = None, function: str | None = None) -> Scenario:
    """A copy with another repeat count or traced function."""
    if repeat is not None:
        sc = replace(sc, repeat=repeat)
    if function is not None:
        sc = replace(sc, function=function)
    return sc
