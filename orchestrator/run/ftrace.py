"""Guest-side ftrace control over SSH (tracefs), with every write checked."""

from __future__ import annotations

import shlex

from ..core.errors import InfraError, Unsupported
from ..machine.vm import Vm

TRACING = "/sys/kernel/tracing"


def _sh(cmd: str, cpu: int | None) -> str:
    return f"taskset -c {cpu} sh -c {shlex.quote(cmd)}" if cpu is not None else cmd


def set_filter(vm: Vm, functions: list[str], cpu: int | None = 0) -> None:
    """Write set_ftrace_filter and read it back: a failed write would trace everything."""
    names = " ".join(functions)
    res = vm.run(_sh(f"echo {names} > {TRACING}/set_ftrace_filter", cpu))
    got = vm.check(f"cat {TRACING}/set_ftrace_filter").split()
    if res.status != 0 or sorted(got) != sorted(functions):
        raise Unsupported(f"cannot filter ftrace on {names}: the write failed or read back "
                          f"{' '.join(got)[:80] or 'nothing'} (use the real symbol, e.g. __do_sys_getpid)")


def set_tracer(vm: Vm, tracer: str, cpu: int | None = 0) -> float:
    """Switch current_tracer (from ``cpu``) and read it back in the same round trip.

    Returns the guest-side wall time of the switch, in seconds.
    """
    res = vm.run(_sh(f"t0=$(cut -d' ' -f1 /proc/uptime); echo {tracer} > {TRACING}/current_tracer"
                     f" && t1=$(cut -d' ' -f1 /proc/uptime) && echo $t0 $t1"
                     f" $(cat {TRACING}/current_tracer)", cpu))
    words = res.stdout.split()
    if res.status != 0 or len(words) != 3:
        raise InfraError(f"switching current_tracer to {tracer} failed: {res.stderr.strip()[-200:]}")
    if words[2] != tracer:
        raise InfraError(f"current_tracer is {words[2]}, not {tracer}")
    try:
        return float(words[1]) - float(words[0])
    except ValueError:
        return 0.0


def available(vm: Vm, function: str) -> bool:
    res = vm.run(f"grep -qx '{function}' {TRACING}/available_filter_functions")
    return res.status == 0
