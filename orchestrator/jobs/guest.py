"""``pokelab boot``, ``run-cmd`` and ``qemu`` as jobs: a guest with no scenario, and its QEMU.

A guest is a :class:`~orchestrator.run.request.KernelChoice`, :class:`~orchestrator.run.request.VmOptions`
and an artifact dir, prepared by :func:`~orchestrator.run.prepare.prepare_vm`; ``--dry-run``
is :func:`dry_run_line` (nothing fetched, built, booted or written).
"""

from __future__ import annotations

import math
import shlex
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.errors import UsageError
from ..host.cache import cache_dir
from ..machine import qemu_build
from ..machine.ssh import Result
from ..machine.vm import Vm
from ..run.prepare import dry_run_argv, prepare_vm
from ..run.request import KernelChoice, VmOptions


def dry_run_line(kernel: KernelChoice, vm: VmOptions, artifacts: Path) -> str:
    """The QEMU command line a run of this guest would use, shell-quoted."""
    return shlex.join(dry_run_argv(kernel, vm, artifacts))


def boot(kernel: KernelChoice, vm: VmOptions, artifacts: Path, *, keep: bool,
         emit: Callable[[str], None]) -> None:
    """``pokelab boot``: boot, ``emit`` the boot line (release, package, seconds, accelerator,
    vCPUs, artifacts) and how to connect (ssh, gdb, console); ``keep``: hold the guest until
    Ctrl-C (KeyboardInterrupt, the guest stopped on the way out) or until QEMU exits (its line)."""
    spec, k = prepare_vm(kernel, vm, artifacts=artifacts)
    with Vm(spec) as guest:
        guest.start()
        release = guest.wait_ready()
        pkg = f" ({k.package} {k.version})" if k.package else ""
        emit(f"booted {release}{pkg} in {guest.boot_seconds:.1f} s ({spec.accel}, {spec.smp} vCPUs); "
             f"artifacts in {spec.artifacts}")
        emit(guest.connect_hint(k.vmlinux))
        if keep:
            emit("the guest stays up until Ctrl-C")
            done = threading.Event()
            while not done.wait(0.5):
                gone = guest.qemu_exited()
                if gone:
                    emit(gone)
                    break


def command_line(argv: Sequence[str], timeout: float = 120.0) -> str:
    """``run-cmd``'s guest command from its words (after an optional ``--``): one word as given,
    more shell-quoted.  UsageError if there is none, or for a deadline (s) that is not positive."""
    if not 0 < timeout < math.inf:
        raise UsageError(f"--timeout {timeout:g}: a guest command's deadline must be finite and over 0 s")
    words = list(argv[1:] if argv[:1] == ["--"] else argv)
    if not words or not "".join(words).strip():
        raise UsageError("run-cmd needs a guest command after --")
    return shlex.join(words) if len(words) > 1 else words[0]


def run_command(kernel: KernelChoice, vm: VmOptions, artifacts: Path, command: str,
                timeout: float) -> Result:
    """``pokelab run-cmd``: boot, run ``command`` over SSH (deadline ``timeout`` s), stop the guest;
    its status, stdout and stderr."""
    spec, _k = prepare_vm(kernel, vm, artifacts=artifacts)
    with Vm(spec) as guest:
        guest.start()
        guest.wait_ready()
        return guest.run(command, timeout)


def ensure_qemu(jobs: int, progress: Callable[[str], None]) -> str:
    """``pokelab qemu``: a QEMU whose gdbstub does not flush translated code at a stop (the host's,
    else built once with ``ninja -j jobs``); its line (path, version, origin, flushes per stop)."""
    if jobs < 1:
        raise UsageError("-j must be at least 1")
    q = qemu_build.ensure_fast(cache_dir(), progress=progress, jobs=jobs)
    per = "not measured" if q.tb_flushes_per_stop is None else f"{q.tb_flushes_per_stop:g}"
    return f"{q.path}  QEMU {q.version} ({q.origin}), TB flushes per debug stop: {per}"
