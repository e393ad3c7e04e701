"""The host's TSC rate, measured: what a TCG guest's ``rdtsc`` counts at.

QEMU's TCG answers ``rdtsc`` with the host's own TSC (``cpu_get_ticks()`` ->
``cpu_get_host_ticks()``, QEMU ``system/cpu-timers.c``), so the guest's TSC runs at the
host's rate.  A ``-M microvm`` guest has no PM timer or HPET to calibrate it against
(and no PC speaker gate for the PIT), so Linux stops early in boot unless it is told the
rate: ``tsc_early_khz=`` (Linux ``arch/x86/kernel/tsc.c``).  The rate is measured
here by running the one instruction ``rdtsc`` from a page of anonymous executable memory,
against ``CLOCK_MONOTONIC``.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import statistics
import time
from functools import cache

from ..core.errors import InfraError

#: rdtsc; shl rdx, 32; or rax, rdx; ret  (x86-64 SysV: the 64-bit count in rax)
_RDTSC = bytes((0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0, 0xC3))


@cache
def host_tsc_khz(window_s: float = 0.05, rounds: int = 3) -> int:
    """The host TSC's rate in kHz: the median of ``rounds`` windows of ``window_s`` seconds.

    About 0.05% from the rate Linux reports (``tsc: Detected ... MHz``) on a quiet host.
    Raises :class:`InfraError` on a non-x86-64 host or where executable memory is refused.
    """
    if platform.machine() not in ("x86_64", "AMD64"):
        raise InfraError(f"the TSC rate is measured on x86-64 hosts only, not {platform.machine()}")
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError as exc:
        raise InfraError(f"cannot map executable memory to read the TSC: {exc.strerror}") from exc
    page.write(_RDTSC)
    rdtsc = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    rates = []
    for _ in range(rounds):
        t0, c0 = time.perf_counter_ns(), rdtsc()
        time.sleep(window_s)
        c1, t1 = rdtsc(), time.perf_counter_ns()
        rates.append((c1 - c0) * 1e6 / (t1 - t0))
    return round(statistics.median(rates))
