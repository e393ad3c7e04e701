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

import logging
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.budget import DEFAULT as DEFAULT_BUDGET
from ..core.budget import TrapBudget
from ..core.census import STATIC_CALL_FORMS, USERS
from ..core.errors import UsageError
from ..kernels import kmod, loadgen
from ..kernels.images import KernelArtifacts
from ..machine.vm import Vm

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
#: a function name (``ksys_read``, ``foo.isra.0``): it goes into tracefs, shell commands and GDB
SYMBOL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


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


def parse_kallsyms_address(output: str) -> int | None:
    """The address in ``awk '$3 == NAME {print $1}' /proc/kallsyms`` output (None if none or 0).  Pure."""
    m = re.search(r"^([0-9a-fA-F]{8,16})\s*$", output, re.M)
    return (int(m.group(1), 16) or None) if m else None


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
    for what, fn in (("function", s.function), *((f"floor_functions[{i}]", f)
                                                  for i, f in enumerate(s.floor_functions))):
        if fn is not None and not SYMBOL_RE.match(fn):
            probs.append(f"{s.name}: {what} {fn!r} is not a function name (letters, digits, _ and .)")
    for kind, steps in (("setup", s.setup), ("steps", s.steps), ("teardown", s.teardown)):
        names = [st.name for st in steps]  # a step's timing and evidence are keyed by its name
        probs += [f"{s.name}: {kind}[{i}].name {n!r} is taken by {kind}[{names.index(n)}]"
                  for i, n in enumerate(names) if names.index(n) != i]
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


def with_options(sc: Scenario, *, repeat: int | None = None, function: str | None = None) -> Scenario:
    """A copy with another repeat count or traced function (UsageError: not a :data:`SYMBOL_RE` name)."""
    if function is not None and not SYMBOL_RE.match(function):
        raise UsageError(f"--function {function!r}: not a function name (letters, digits, _ and .)")
    if repeat is not None:
        sc = replace(sc, repeat=repeat)
    if function is not None:
        sc = replace(sc, function=function)
    return sc
