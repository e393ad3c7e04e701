"""The guest's own hang detectors, scaled to how slowly the guest runs.  Pure.

The kernel's RCU stall detector, soft-lockup watchdog and hung-task detector
count guest time and assume a CPU that runs at native speed.  Under TCG with
``thread=single`` every vCPU takes turns on one host thread, and each stop of
the probe costs the guest more (QEMU before 10.2 flushes its whole translation
cache at every debug stop, so the guest re-translates what it runs next):
a loop that takes 20 s of guest time here is far less work than the 20 s the
kernel's defaults were chosen for.  Like syzkaller (``sys/targets``
``Target.Timeouts(slowdown)``, and its emulated-machine kernel configs, which
use about 3x the native thresholds), we multiply the kernel's thresholds by a
slowdown factor and cap them:

* ``slowdown = vcpus_per_host_thread * probe_overhead``: the first is exact
  (``-smp N`` with ``tcg,thread=single``: N; ``thread=multi`` or KVM: 1); the
  second is measured (``pokelab bench --part vm``: switch time with the probe /
  without it, the same switches: 1.77 and 1.88 on QEMU 7.2, 1.08 on QEMU
  10.2.2, issue 11) and follows the QEMU in use (:func:`probe_overhead`: its
  measured TB flushes per debug stop decide which figure applies).  TCG's own
  cost over native code is left out (it cannot be measured on a host where KVM
  does not work), so the factor errs low.
* caps: ``rcupdate.rcu_cpu_stall_timeout`` at 300 s (the kernel clamps it
  there: ``rcu_jiffies_till_stall_check()`` in kernel/rcu/tree_stall.h), the
  others at syzkaller's emulated-machine values (``watchdog_thresh=165``,
  ``hung_task_timeout_secs`` 420).

Kernel defaults mirrored (Debian 6.1 and 6.12 cloud configs):
``CONFIG_RCU_CPU_STALL_TIMEOUT=21``, ``watchdog_thresh`` 10 (kernel/watchdog.c;
a soft lockup is reported after 2x that), ``CONFIG_DEFAULT_HUNG_TASK_TIMEOUT=120``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

RCU_CPU_STALL_TIMEOUT = 21
WATCHDOG_THRESH = 10
HUNG_TASK_TIMEOUT_SECS = 120

RCU_MAX = 300
WATCHDOG_THRESH_MAX = 165
HUNG_TASK_MAX = 420

#: probe_overhead measured by ``pokelab bench --part vm`` (issue 11): a QEMU whose gdbstub
#: flushes the translation cache at every stop (before 10.2), and one that does not
PROBE_OVERHEAD_FLUSHING = 1.9
PROBE_OVERHEAD_NO_FLUSH = 1.1


@dataclass(frozen=True)
class GuestWatchdogs:
    """The thresholds given to one guest, in seconds, and the factor they came from."""

    slowdown: float
    rcu_cpu_stall_timeout: int
    watchdog_thresh: int
    hung_task_timeout_secs: int
    #: how the slowdown was made up (written into the verdict JSON)
    parts: tuple[tuple[str, float], ...] = ()

    def kernel_args(self) -> tuple[str, ...]:
        """Kernel command-line words (``sysctl.`` boot parameters exist since 5.8)."""
        return (f"rcupdate.rcu_cpu_stall_timeout={self.rcu_cpu_stall_timeout}",
                f"watchdog_thresh={self.watchdog_thresh}",
                f"sysctl.kernel.hung_task_timeout_secs={self.hung_task_timeout_secs}")

    def as_dict(self) -> dict[str, Any]:
        return {"slowdown": self.slowdown, "parts": dict(self.parts),
                "rcu_cpu_stall_timeout_s": self.rcu_cpu_stall_timeout,
                "watchdog_thresh_s": self.watchdog_thresh,
                "soft_lockup_after_s": 2 * self.watchdog_thresh,
                "hung_task_timeout_s": self.hung_task_timeout_secs}


def scaled(slowdown: float, parts: tuple[tuple[str, float], ...] = ()) -> GuestWatchdogs:
    """The kernel's defaults times ``slowdown`` (>= 1), rounded up, capped.  ValueError if < 1."""
    if not slowdown >= 1.0:
        raise ValueError(f"slowdown must be >= 1, not {slowdown}")

    def up(base: int, cap: int) -> int:
        return min(cap, math.ceil(base * slowdown))

    return GuestWatchdogs(round(slowdown, 3), up(RCU_CPU_STALL_TIMEOUT, RCU_MAX),
                          up(WATCHDOG_THRESH, WATCHDOG_THRESH_MAX),
                          up(HUNG_TASK_TIMEOUT_SECS, HUNG_TASK_MAX), parts)


def probe_overhead(flushes: bool | None) -> float:
    """The probe's slowdown of the guest on a QEMU whose gdbstub flushes the translation cache
    at every debug stop (``flushes``: True, QEMU before 10.2) or does not (False, 10.2+);
    None (not known: no QEMU record) takes the flushing figure, the larger one."""
    return PROBE_OVERHEAD_NO_FLUSH if flushes is False else PROBE_OVERHEAD_FLUSHING


def for_machine(accel: str, tcg_thread: str, smp: int,
                probe_overhead: float = PROBE_OVERHEAD_FLUSHING) -> GuestWatchdogs | None:
    """The thresholds for a guest of this shape; None under KVM (the defaults fit real CPUs).

    ``probe_overhead``: see :func:`probe_overhead` (the caller knows the QEMU).
    """
    if accel == "kvm":
        return None
    per_thread = smp if tcg_thread == "single" else 1
    parts = (("vcpus_per_host_thread", float(per_thread)), ("probe_overhead", probe_overhead))
    return scaled(max(1.0, per_thread * probe_overhead), parts)

