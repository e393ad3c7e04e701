"""The scenarios, as data (see ``scenario.py`` for what each field means and what is checked)."""

from __future__ import annotations

from dataclasses import replace

from ..core.budget import TrapBudget
from ..kernels import kmod, loadgen
from .scenario import FinalState, Load, Scenario, Step, module_guest_path

T = "{tracing}"
FTRACE = ("CONFIG_FUNCTION_TRACER", "CONFIG_DYNAMIC_FTRACE", "symbol:{function}",
          "tracefs:set_ftrace_filter", "tracefs:current_tracer")
#: evidence never depends on the load (``--workload`` replaces it): ``{call}`` calls the
#: function from vCPU 0 first (scenario.CALLERS), or the count is system-wide
#: how many trace lines name the function (grep stops early: the buffer may be full)
TRACE_HITS = "{call}; sleep 0.3; grep -c -m 50 '{function}' " + T + "/trace || true"
#: sched_count summed over the CPUs of /proc/schedstat (field 4 of the cpuN lines), over 0.3 s:
#: schedule_debug() counts it with schedstat_inc(), which only counts behind the
#: sched_schedstats static key (kernel/sched/core.c, stats.h); the sleep itself schedules
SCHEDSTAT_DELTA = ("a=$(awk '/^cpu/ {s += $4} END {print s}' /proc/schedstat); sleep 0.3; "
                   "b=$(awk '/^cpu/ {s += $4} END {print s}' /proc/schedstat); echo $((b - a))")

#: our module (images/modules/pokelab_ops, built on the host by kmod.py, put in the initramfs)
OPS = "/sys/kernel/debug/pokelab_ops"
OPS_REQUIRES = ("CONFIG_DYNAMIC_FTRACE", "CONFIG_DEBUG_FS", "symbol:{function}", f"module:{kmod.NAME}")
INSMOD = Step("insmod", f"insmod {module_guest_path('$(uname -r)')} && test -w {OPS}/control", site="nop")
RMMOD = Step("rmmod", f"rmmod {kmod.NAME}")
MODULE_GONE = FinalState(site="nop", checks=((f"grep -c '^{kmod.NAME} ' /proc/modules; true", r"^0\s*$"),))


def ops_register(n: int, name: str, site: str = "call") -> Step:
    """Register ops N on the function; evidence: its handler's call count."""
    return Step(name, f"echo 'register {n} {{function}}' > {OPS}/control", site=site,
                evidence=f"{{call}}; sleep 0.3; awk '$1 == \"ops{n}\" {{print $3}}' {OPS}/counts")


def ops_unregister(n: int, name: str, site: str) -> Step:
    return Step(name, f"echo 'unregister {n}' > {OPS}/control && grep -q '^ops{n} 0 ' {OPS}/counts",
                site=site)


TRACER_ON = Step("tracer-on", f"echo function > {T}/current_tracer && grep -qx function {T}/current_tracer",
                 site="call", evidence=TRACE_HITS)
SET_FILTER = Step("filter", f"echo {{function}} > {T}/set_ftrace_filter && "
                            f"grep -qx '{{function}}' {T}/set_ftrace_filter")
CLEAR_FILTER = Step("clear-filter", f"echo > {T}/set_ftrace_filter")
TRACER_OFF = Step("tracer-off", f"echo nop > {T}/current_tracer", site="nop")

#: PREEMPT_DYNAMIC: the mode file, and each mode's static calls (kernel/sched/core.c
#: sched_dynamic_update(): preempt_dynamic_enable/disable; disabled cond_resched and
#: might_resched are __static_call_return0 (ret0), disabled preempt_schedule* and
#: irqentry_exit_cond_resched are NULL)
PREEMPT = "/sys/kernel/debug/sched/preempt"
PREEMPT_CALLS = ("cond_resched", "might_resched", "preempt_schedule", "preempt_schedule_notrace",
                 "irqentry_exit_cond_resched")
PREEMPT_FORMS = {
    "none": ("func", "ret0", "null", "null", "null"),
    "voluntary": ("func", "func", "null", "null", "null"),
    "full": ("ret0", "ret0", "func", "func", "func"),
}


def preempt_step(mode: str, name: str | None = None) -> Step:
    """Switch PREEMPT_DYNAMIC to ``mode``; evidence: the file reads back ``(mode)``; trampolines checked."""
    return Step(name or mode, f"echo {mode} > {PREEMPT}",
                evidence=f"grep -c '({mode})' {PREEMPT} || true",
                static_calls=tuple(zip(PREEMPT_CALLS, PREEMPT_FORMS[mode], strict=True)))


def tp_step(name: str, instance: str, on: int, func: str) -> Step:
    """Enable (1) or disable (0) sys_enter_getpid in trace instance ``pokelab_<instance>``;
    tp_func_sys_enter must then call ``func``.  Evidence (on): the instance traced getpid."""
    inst = f"{T}/instances/pokelab_{instance}"
    # {call}: pokelab's own getpid(2) from vCPU 0, so a --workload need not call it
    hits = f"{{call}}; sleep 0.3; grep -c -m 50 sys_getpid {inst}/trace || true"
    return Step(name, f"echo {on} > {inst}/events/syscalls/sys_enter_getpid/enable",
                evidence=hits if on else None,
                static_calls=(("tp_func_sys_enter", f"func:{func}"),))


#: evidence of an unfiltered tracer: the function's calls are in the trace (tracing paused while read:
#: reading ``trace`` while every function is traced can take very long)
TRACE_HITS_ALL = ("{call}; sleep 0.3; echo 0 > " + T + "/tracing_on; "
                  "grep -c -m 50 '{function}' " + T + "/trace; echo 1 > " + T + "/tracing_on")

#: optimized kprobes (arch/x86/kernel/kprobes/opt.c): the list in debugfs and the sysctl that allows them
KPROBES_LIST = "/sys/kernel/debug/kprobes/list"
KPROBE_OPT_SYSCTL = "/proc/sys/debug/kprobes-optimization"


def _poll(cond: str, seconds: int) -> str:
    """A guest shell loop: wait (0.2 s steps, at most ``seconds``) until ``cond`` holds, then test it."""
    return f"for i in $(seq {seconds * 5}); do {cond} && break; sleep 0.2; done; {cond}"


#: the livepatch module (images/modules/pokelab_lp) and its sysfs directory
LP = f"/sys/kernel/livepatch/{kmod.LIVEPATCH}"
LP_CALLS = f"/sys/module/{kmod.LIVEPATCH}/parameters/calls"
#: the patch transition is over (in at most 30 s)
LP_SETTLED = _poll(f"grep -qx 0 {LP}/transition", 30)
#: on a stuck transition: the tasks not yet switched (/proc/PID/patch_state is not 1) and their stacks
LP_STUCK = ("for p in /proc/[0-9]*; do s=$(cat $p/patch_state 2>/dev/null); [ \"$s\" = 1 ] || "
            "echo \"stuck ${p#/proc/} $(cat $p/comm) $s $(cat $p/stack 2>/dev/null | head -3 | "
            "awk '{print $2}' | tr '\\n' ' ')\" >&2; done")

#: a static key with many jump sites, flipped in a loop on vCPU 1 while vCPU 0 switches the
#: function tracer, inside one step (so the read-back after it sees no patching in flight).  Each
#: flip queues the key's sites with smp_text_poke_batch_add(), dropping text_mutex after each (x86
#: arch_jump_label_transform_queue()), then writes them in one batch: a single poke that takes
#: text_mutex between two queued sites joins the batch.  sched_schedstats: 66 sites on 7.3, all
#: above ftrace_call (kernel/sched/), and a flip is a sysctl write with nothing else in it.  Measured
#: on 7.3.4 with images/patches/0002-* (10 runs each): sched_process_exec's one site FAILed 0/10
#: (the window between queue and apply is a few instructions); the three mmap_lock events (~110 sites
#: each, but every enable waits for an RCU grace period) 3/10; sched_schedstats 10/10, and the
#: unpatched tree PASSed 10/10 (docs/kernel-build.md).
SCHEDSTATS = "/proc/sys/kernel/sched_schedstats"
SWITCHES_UNDER_FLIPS = (
    "rm -f /tmp/flips /tmp/flips.stop; "
    "taskset -c 1 sh -c \"while [ ! -e /tmp/flips.stop ]; do echo 1 > " + SCHEDSTATS + "; echo 0 > "
    + SCHEDSTATS + "; echo >> /tmp/flips; done\" & flipper=$!; "
    f"for i in 1 2 3 4; do echo function > {T}/current_tracer && echo nop > {T}/current_tracer; done; "
    f"echo function > {T}/current_tracer; touch /tmp/flips.stop; wait $flipper; "
    # the flipper flipped (an empty count fails the step), the tracer is on
    f"test -s /tmp/flips && grep -qx function {T}/current_tracer")

#: bpf-tailcall: ``loadgen bpf-tailcall ROUNDS PACE_US`` (images/loadgen/loadgen.c) loads a socket filter
#: that tail-calls slot 0 of a prog array with a constant index (the x86 JIT's direct tail call: a
#: 5-byte NOP/jmp at tailcall_target and a jmp/NOP bypass, arch/x86/net/bpf_jit_comp.c
#: emit_bpf_tail_call_direct) and runs it on vCPUs 1.., then ROUNDS times updates slot 0 with the
#: target and deletes it, PACE_US us apart: 4 text_poke writes a round (kernel/bpf/arraymap.c
#: prog_array_map_poke_run -> bpf_arch_poke_desc_update -> __bpf_arch_text_poke: text_poke_bp(),
#: smp_text_poke_single() on 6.16+).  It prints one line and keeps the programs loaded (their text is
#: read back after the step) until SIGTERM.
BPF_OUT, BPF_PID = "/tmp/bpf-tailcall.out", "/tmp/bpf-tailcall.pid"
BPF_ROUNDS, BPF_PACE_US = 20, 20000
BPF_SYSCTL = "/proc/sys/net/core"
BPF_FLIP = (
    f"rm -f {BPF_OUT}; {loadgen.GUEST_PATH} bpf-tailcall {BPF_ROUNDS} {BPF_PACE_US} < /dev/null "
    f"> {BPF_OUT} 2>&1 & echo $! > {BPF_PID}; "
    # at most 60 s for the loads and flips, or until the loader is gone
    f"for i in $(seq 300); do grep -q '^bpf-tailcall ' {BPF_OUT} && break; "
    f"kill -0 $(cat {BPF_PID}) 2>/dev/null || break; sleep 0.2; done; "
    f"grep -q '^bpf-tailcall ' {BPF_OUT} || {{ cat {BPF_OUT} >&2; false; }}")
#: the target's run count: the jmp written at tailcall_target was taken (0 after flips that trapped: FAIL)
BPF_TARGET_RUNS = f"sed -n 's/^bpf-tailcall .* target_runs=\\([0-9]*\\).*/\\1/p' {BPF_OUT}"
#: the loader told to go and gone (its programs, maps and JITed text are freed), no error from it
BPF_UNLOAD = (f"kill -TERM $(cat {BPF_PID}); " + _poll(f"! kill -0 $(cat {BPF_PID}) 2>/dev/null", 30)
              + f" && ! grep '^loadgen: ' {BPF_OUT} >&2")

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="ftrace-function",
        description="function tracer on/off with a filter on __do_sys_getpid while vCPUs 1.. spin in getpid",
        requires=FTRACE,
        setup=(SET_FILTER,),
        steps=(Step("tracer-on", f"echo function > {T}/current_tracer && "
                                 f"grep -qx function {T}/current_tracer",
                    site="call", evidence=TRACE_HITS),
               TRACER_OFF),
        teardown=(CLEAR_FILTER,),
    ),
    Scenario(
        name="ftrace-graph",
        description="function_graph tracer on/off (set_graph_function + filter) on __do_sys_getpid",
        requires=(*FTRACE, "CONFIG_FUNCTION_GRAPH_TRACER", "tracefs:set_graph_function"),
        setup=(SET_FILTER,
               Step("graph-function", f"echo {{function}} > {T}/set_graph_function && "
                                      f"grep -qx '{{function}}' {T}/set_graph_function")),
        steps=(Step("graph-on", f"echo function_graph > {T}/current_tracer && "
                                f"grep -qx function_graph {T}/current_tracer",
                    site="call", evidence=TRACE_HITS),
               TRACER_OFF),
        teardown=(Step("clear-graph-function", f"echo > {T}/set_graph_function"), CLEAR_FILTER),
    ),
    Scenario(
        name="ftrace-function-all",
        description="unfiltered function tracer, then function_graph, on/off (all fentry sites), getpid load",
        requires=(*FTRACE, "CONFIG_FUNCTION_GRAPH_TRACER", "tracefs:buffer_size_kb"),
        # a small ring buffer: the evidence read stays short
        setup=(CLEAR_FILTER, Step("small-buffer", f"echo 64 > {T}/buffer_size_kb")),
        steps=(replace(TRACER_ON, evidence=TRACE_HITS_ALL),
               replace(TRACER_OFF, name="tracer-off"),
               Step("graph-on", f"echo function_graph > {T}/current_tracer && "
                                f"grep -qx function_graph {T}/current_tracer",
                    site="call", evidence=TRACE_HITS_ALL),
               replace(TRACER_OFF, name="graph-off")),
        teardown=(Step("default-buffer", f"echo 1408 > {T}/buffer_size_kb"),),
        repeat=1,
        # ~140 batches of up to 256 sites per switch (6.1's TP_VEC_MAX): the first 8 batches of
        # each switch, 2 traps of each, at most 10 judged traps/s; the floor counts them anywhere
        budget=TrapBudget(first=2, rate=10.0, burst=32, batches_per_burst=8),
        min_traps=8,
        floor_anywhere=True,
    ),
    Scenario(
        name="kprobe-ftrace",
        description="kprobe event on __do_sys_getpid's entry (ftrace-based): add, enable, disable, remove",
        requires=("CONFIG_KPROBE_EVENTS", "CONFIG_KPROBES_ON_FTRACE", "symbol:{function}",
                  "tracefs:kprobe_events", "tracefs:kprobe_profile"),
        steps=(Step("add", f"echo 'p:pokelab/getpid {{function}}' >> {T}/kprobe_events", site="nop"),
               Step("enable", f"echo 1 > {T}/events/pokelab/getpid/enable", site="call",
                    evidence=f"{{call}}; sleep 0.3; awk '$1 ~ /getpid$/ {{print $2}}' {T}/kprobe_profile"),
               Step("disable", f"echo 0 > {T}/events/pokelab/getpid/enable", site="nop"),
               Step("remove", f"echo '-:pokelab/getpid' >> {T}/kprobe_events")),
        final_state=FinalState(site="nop", checks=((f"cat {T}/kprobe_events; echo end", r"^end\s*$"),)),
    ),
    Scenario(
        name="static-key-schedstats",
        description="sysctl kernel.sched_schedstats 1/0 flips a static key (JMP/NOP) under sched_yield",
        requires=("CONFIG_SCHEDSTATS", "CONFIG_JUMP_LABEL", "sysctl:kernel.sched_schedstats",
                  "symbol:sched_schedstats", "symbol:update_curr"),
        load=Load("yield"),
        function=None,
        # the key's sites, wherever the compiler put them (update_curr on 6.1, update_se+0x4b on
        # 7.3: inlined), named by the census from the kernel's __jump_table
        floor_keys=("jump_label:sched_schedstats",),
        steps=(Step("schedstats-on", "echo 1 > /proc/sys/kernel/sched_schedstats",
                    # the scheduler's own counts, behind the static branch: any load, any task
                    evidence=SCHEDSTAT_DELTA),
               Step("schedstats-off", "echo 0 > /proc/sys/kernel/sched_schedstats")),
        final_state=FinalState(site=None, checks=(("cat /proc/sys/kernel/sched_schedstats", r"^0\s*$"),)),
    ),
    Scenario(
        name="static-call-preempt",
        description="PREEMPT_DYNAMIC none -> voluntary -> full -> voluntary under read(2) of /dev/zero",
        requires=("CONFIG_PREEMPT_DYNAMIC", "CONFIG_HAVE_STATIC_CALL_INLINE", "debugfs:sched/preempt",
                  # 7.x with PREEMPT_LAZY offers only "full lazy": switching those flips a static
                  # key, no static call (seen on Debian 7.3.4)
                  "offers:sched/preempt:none", "offers:sched/preempt:voluntary",
                  "symbol:__static_call_return0", "symbol:__SCT__cond_resched"),
        # read_zero() calls cond_resched(): its inline static-call site is hot; a PAUSE after
        # each read lets the busy vCPUs answer text_poke_bp's IPIs at once under TCG (one
        # switch: ~2.5 s instead of ~90 s)
        load=Load("read", pace=(1, 0)),
        function=None,
        floor_keys=tuple(f"static_call:{c}" for c in PREEMPT_CALLS),
        # each switch re-enables all five calls first, then disables per mode: ~4,400
        # one-site text_poke_bp batches per switch (a stop each would take minutes);
        # the steps read back every inline site and trampoline of the five instead
        record_batches=False,
        repeat=2,
        steps=(preempt_step("none"), preempt_step("voluntary"), preempt_step("full"),
               preempt_step("voluntary", "back-to-voluntary")),
        final_state=FinalState(site=None, checks=((f"cat {PREEMPT}", r"\(voluntary\)"),)),
    ),
    Scenario(
        name="tracepoint-static-call",
        description="sys_enter_getpid enabled in trace instances a then b, then off: sys_enter's static call "
                    "moves",
        requires=("CONFIG_FTRACE_SYSCALLS", "CONFIG_HAVE_STATIC_CALL_INLINE", "tracefs:instances",
                  "tracefs:events/syscalls/sys_enter_getpid/enable", "symbol:__SCT__tp_func_sys_enter",
                  "symbol:__traceiter_sys_enter", "symbol:ftrace_syscall_enter"),
        # the syscall the event traces ({call} in the evidence); the floor is at the static call
        function="__do_sys_getpid",
        floor_keys=("static_call:tp_func_sys_enter",),
        setup=(Step("mkdir", f"mkdir -p {T}/instances/pokelab_a {T}/instances/pokelab_b"),),
        # one probe (instance a's ftrace_syscall_enter): a direct call; two: the iterator
        # (kernel/tracepoint.c tracepoint_update_call()); none: the iterator again, key off
        steps=(tp_step("a-on", "a", 1, "ftrace_syscall_enter"),
               tp_step("b-on", "b", 1, "__traceiter_sys_enter"),
               tp_step("b-off", "b", 0, "ftrace_syscall_enter"),
               tp_step("a-off", "a", 0, "__traceiter_sys_enter")),
        teardown=(Step("rmdir", f"rmdir {T}/instances/pokelab_a {T}/instances/pokelab_b"),),
        final_state=FinalState(site=None, checks=((f"ls {T}/instances; echo end", r"^end\s*$"),)),
    ),
    Scenario(
        name="single-poke-in-batch",
        description="function tracer on/off (single pokes) while sched_schedstats flips on vCPU 1 (batches)",
        requires=(*FTRACE, "CONFIG_JUMP_LABEL", "CONFIG_SCHEDSTATS", "sysctl:kernel.sched_schedstats"),
        # The tracer switch rewrites ftrace_call/ftrace_regs_call with smp_text_poke_single() (6.16+;
        # text_poke_bp() before); ftrace_64.S links below kernel/, so a single poke that joins the
        # jump-label batch in flight lands out of order: the c8976ade0c1b class (fixed by
        # 2aebf5ee43bf), brought back by images/patches/0002-*.  (The switch also registers the
        # cmdline recorder on sched_switch/sched_wakeup: their inline static-call sites are single
        # pokes too, and join the same way.)  Several switches per step: each is one more chance
        # to take text_mutex between two queued jump sites.
        setup=(SET_FILTER,),
        steps=(Step("switches-under-flips", SWITCHES_UNDER_FLIPS, site="call", evidence=TRACE_HITS),
               TRACER_OFF),
        repeat=3,
        # the schedstats sites are the scheduler's own (update_se(), __schedule(), ttwu): every
        # flip's batch traps on all vCPUs.  The default budget stopped at ~30,000 of those traps in
        # 3 min and the step timed out; judging 2 per batch, 10/s, keeps a run under a minute (the
        # vector of every batch is still checked: the budget limits trap stops only)
        budget=TrapBudget(first=2, rate=10.0, burst=32),
        teardown=(CLEAR_FILTER,),
        final_state=FinalState(site="nop", checks=((f"cat {SCHEDSTATS}", r"^0\s*$"),)),
    ),
    Scenario(
        name="ftrace-direct",
        description="our module's direct-call trampoline on __do_sys_getpid registered and unregistered",
        requires=(*OPS_REQUIRES, "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS"),
        setup=(INSMOD,),
        # NOP <-> call pokelab_direct_tramp (a module address, not an ftrace trampoline)
        steps=(Step("direct-on", f"echo 'direct on {{function}}' > {OPS}/control", site="call",
                    target="pokelab_direct_tramp",
                    evidence=f"{{call}}; sleep 0.3; awk '$1 == \"direct\" {{print $3}}' {OPS}/counts"),
               Step("direct-off", f"echo 'direct off' > {OPS}/control && grep -q '^direct 0 ' {OPS}/counts",
                    site="nop")),
        teardown=(RMMOD,),
        final_state=MODULE_GONE,
    ),
    Scenario(
        name="ops-one",
        description="our module: one ftrace_ops on __do_sys_getpid registered and unregistered",
        requires=OPS_REQUIRES,
        setup=(INSMOD,),
        # NOP <-> call to the ops' own trampoline
        steps=(ops_register(0, "register-ops0"), ops_unregister(0, "unregister-ops0", "nop")),
        teardown=(RMMOD,),
        final_state=MODULE_GONE,
    ),
    Scenario(
        name="ops-two",
        description="our module: two ftrace_ops on one function (trampoline <-> list function retargets)",
        requires=OPS_REQUIRES,
        setup=(INSMOD,),
        # ops0's trampoline -> the list function (ops1 saves regs) -> ops0's trampoline -> NOP
        steps=(ops_register(0, "register-ops0"), ops_register(1, "register-ops1"),
               ops_unregister(1, "unregister-ops1", "call"), ops_unregister(0, "unregister-ops0", "nop")),
        teardown=(RMMOD,),
        final_state=MODULE_GONE,
    ),
    Scenario(
        name="ops-and-tracer",
        description="our module's ftrace_ops and the function tracer added and removed in different orders",
        requires=(*OPS_REQUIRES, *FTRACE),
        setup=(INSMOD, SET_FILTER),
        # ops first (removed first), then the tracer first (removed first)
        steps=(ops_register(0, "ops-first-register"),
               replace(TRACER_ON, name="ops-first-tracer-on"),
               ops_unregister(0, "ops-first-unregister", "call"),
               replace(TRACER_OFF, name="ops-first-tracer-off"),
               replace(TRACER_ON, name="tracer-first-tracer-on"),
               ops_register(0, "tracer-first-register"),
               replace(TRACER_OFF, name="tracer-first-tracer-off", site="call"),
               ops_unregister(0, "tracer-first-unregister", "nop")),
        teardown=(CLEAR_FILTER, RMMOD),
        final_state=MODULE_GONE,
    ),
    Scenario(
        name="kprobe-optimized",
        description="kprobe in __do_sys_getpid's body: armed, optimized (JMP32 detour), unoptimized, removed",
        requires=("CONFIG_OPTPROBES", "CONFIG_KPROBE_EVENTS", "CONFIG_DEBUG_FS", "symbol:{function}",
                  "sysctl:debug.kprobes-optimization", "tracefs:kprobe_events", "tracefs:kprobe_profile",
                  "debugfs:kprobes/list"),
        watch_body=True,
        setup=(Step("optimization-on", f"echo 1 > {KPROBE_OPT_SYSCTL} && grep -qx 1 {KPROBE_OPT_SYSCTL} && "
                                       f"test -r {KPROBES_LIST}"),),
        # add: registered disabled (not armed); enable: int3 by text_poke(), then the optimizer's
        # JMP32 detour through the int3 batch; disable: unoptimized and disarmed by text_poke()
        steps=(Step("add", f"echo 'p:pokelab/bodyprobe {{body}}' >> {T}/kprobe_events", body="original"),
               Step("enable", f"echo 1 > {T}/events/pokelab/bodyprobe/enable && "
                              + _poll(f"grep -q OPTIMIZED {KPROBES_LIST}", 30),
                    body="jmp",
                    evidence=f"{{call}}; sleep 0.3; "
                             f"awk '$1 ~ /bodyprobe$/ {{print $2}}' {T}/kprobe_profile"),
               Step("disable", f"echo 0 > {T}/events/pokelab/bodyprobe/enable && "
                               + _poll(f"! grep -q OPTIMIZED {KPROBES_LIST}", 30) + " && sleep 0.2",
                    body="original"),
               Step("remove", f"echo '-:pokelab/bodyprobe' >> {T}/kprobe_events", body="original")),
        final_state=FinalState(site="nop", body="original",
                               checks=((f"cat {T}/kprobe_events {KPROBES_LIST}; echo end", r"^end\s*$"),)),
    ),
    Scenario(
        name="livepatch",
        description="our livepatch module redirects __do_sys_getpid: enabled and disabled under getpid load",
        requires=("CONFIG_LIVEPATCH", "CONFIG_DYNAMIC_FTRACE", "symbol:{function}", "sysfs:kernel/livepatch",
                  f"module:{kmod.LIVEPATCH}"),
        # e3ff7c609f39 (6.4, gone again by 7.3): with PREEMPT_DYNAMIC each transition retargets the
        # cond_resched static call to klp_cond_resched and back, one int3 batch per call site
        # Measured on 6.12.117, 4 vCPUs, TCG single-threaded, getpid load on vCPUs 1-3: the enable
        # transition took 170.7 s without the probe and ~170 s under it (4,927 one-site batches in
        # its first 180 s, 38 ms apart): each batch's three sync_core IPIs wait for TCG's round robin
        # to reach the busy vCPUs.  The probe is not what is slow; the emulation is.
        unsupported_if=(("symbol:sched_dynamic_klp_enable",
                         "not run, a limit of the emulation, not of the kernel: each livepatch "
                         "transition here rewrites every cond_resched static-call site, one int3 batch "
                         "each, and under TCG single-threaded each batch waits ~38 ms for its sync_core "
                         "IPIs: a transition takes ~170 s with or without the probe (6.12, measured), "
                         "longer than this scenario's step deadline"),),
        # insmod enables the patch: the fentry site goes NOP -> call of the ftrace trampoline of the
        # livepatch ops (FTRACE_OPS_FL_IPMODIFY), whose handler sends the call to the new body;
        # disabling reverts the transition and frees the patch (its sysfs directory goes away)
        steps=(Step("enable", f"insmod {module_guest_path('$(uname -r)', kmod.LIVEPATCH)} && "
                              + f"{{ {LP_SETTLED} || {{ {LP_STUCK}; false; }}; }}"
                              + f" && grep -qx 1 {LP}/enabled",
                    site="call", evidence=f"{{call}}; sleep 0.3; cat {LP_CALLS}"),
               Step("disable", f"echo 0 > {LP}/enabled && " + _poll(f"! test -e {LP}", 30), site="nop"),
               Step("rmmod", f"rmmod {kmod.LIVEPATCH}")),
        final_state=FinalState(site="nop", checks=(
            (f"grep -c '^{kmod.LIVEPATCH} ' /proc/modules; ls /sys/kernel/livepatch | wc -l",
             r"^0\s+0\s*$"),)),
    ),
    Scenario(
        name="bpf-tailcall",
        description="a BPF prog array slot updated/deleted while vCPUs 1.. run the JIT's direct tail call",
        requires=("CONFIG_BPF_SYSCALL", "CONFIG_BPF_JIT", "symbol:prog_array_map_poke_run",
                  "sysctl:net.core.bpf_jit_enable", "sysctl:net.core.bpf_jit_harden",
                  "sysctl:net.core.bpf_jit_kallsyms"),
        # the loader's children run the filter on vCPUs 1..; the scenario's own load stays light
        load=Load("getpid", max_cpus=1, pace=(1, 1000)),
        function=None,
        # the sites are in the JITed program (no vmlinux table): the read-back names them from the
        # kernel's bpf_kallsyms list while the program is loaded (census region, user bpf)
        floor_keys=("bpf",),
        # JIT on; no constant blinding (it turns the constant index into a register load: no poke
        # descriptor, kernel/bpf/verifier.c); BPF text listed in kallsyms (the read-back walks it)
        setup=(Step("jit", f"echo 1 > {BPF_SYSCTL}/bpf_jit_enable && echo 0 > {BPF_SYSCTL}/bpf_jit_harden && "
                           f"echo 1 > {BPF_SYSCTL}/bpf_jit_kallsyms"),),
        steps=(Step("flip", BPF_FLIP, evidence=BPF_TARGET_RUNS), Step("unload", BPF_UNLOAD)),
        final_state=FinalState(site=None, checks=(
            (_poll("! grep -q '_pokelab_tc' /proc/kallsyms", 10) + "; echo $?", r"^0\s*$"),)),
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}


def get(name: str) -> Scenario | None:
    return BY_NAME.get(name)
