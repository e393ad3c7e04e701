"""The one place that starts child processes.

Every child gets an owner: it runs in its own session (so a terminal ^C does
not reach it behind our back), it is killed with SIGKILL if the thread that
started it dies (``PR_SET_PDEATHSIG``, so even a SIGKILL of the runner takes
it along), and :meth:`Child.close` ends it gracefully, then by force, with a
deadline, idempotently.  Start children from the main thread: Linux delivers
the parent-death signal when the *thread* that forked exits.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from ..core.errors import InfraError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _pdeathsig_hook() -> Callable[[], None]:
    """A preexec hook, prepared in the parent so the child only makes one libc call."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return hook


def _deadline(timeout: float, what: str) -> float:
    """``timeout`` if it is a real deadline (finite, >= 0 s); ValueError otherwise (a caller's bug)."""
    if not (isinstance(timeout, int | float) and 0 <= timeout < math.inf):
        raise ValueError(f"{what}: a deadline must be a finite number of seconds >= 0, not {timeout!r}")
    return float(timeout)


def which(tool: str, package: str) -> str:
    """Path of ``tool`` or a one-line InfraError naming the Debian package."""
    path = shutil.which(tool)
    if path is None:
        raise InfraError(f"{tool} not found: install the Debian package '{package}' (make setup)")
    return path


class Child:
    """One owned child process."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = subprocess.DEVNULL,
        stderr: int | IO[bytes] | None = subprocess.DEVNULL,
        cwd: Path | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        """``pass_fds``: file descriptors the child inherits (as in :class:`subprocess.Popen`)."""
        if threading.current_thread() is not threading.main_thread():
            log.debug("%s started from a non-main thread: it dies when that thread exits", name)
        self.name = name
        self.argv = list(argv)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                cwd=cwd,
                preexec_fn=_pdeathsig_hook(),  # noqa: PLW1509 - one prctl() call, prepared in the parent
                start_new_session=True,
                close_fds=True,
                pass_fds=tuple(pass_fds),
            )
        except OSError as exc:
            raise InfraError(f"cannot start {name} ({self.argv[0]}): {exc.strerror}") from exc
        self._closed = False
        log.debug("started %s pid %d", name, self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def cpu_seconds(self) -> float | None:
        """The child's user + system CPU time so far, in seconds (``/proc/<pid>/stat``); None once
        it is gone or where there is no /proc."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if the child still runs after ``timeout`` s (finite, >= 0)."""
        try:
            return self.proc.wait(timeout=_deadline(timeout, f"waiting for {self.name}"))
        except subprocess.TimeoutExpired:
            return None

    def close(self, grace: float = 3.0, sig: int = signal.SIGTERM) -> int | None:
        """Ask the process group to stop, wait up to ``grace`` s, then SIGKILL it. Idempotent."""
        if self._closed:
            return self.proc.returncode
        self._closed = True
        if self.proc.poll() is None:
            self._signal_group(sig)
            if self.wait(grace) is None:
                self._signal_group(signal.SIGKILL)
                self.wait(5.0)
        else:
            # the leader is gone; make sure nothing it forked lingers in its group
            self._signal_group(signal.SIGKILL)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return self.proc.returncode

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def run(argv: Sequence[str], *, timeout: float, what: str, cwd: Path | None = None,
        stdin_data: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run a short host command to completion with a deadline; InfraError with its stderr tail on failure.

    ``timeout``: seconds, finite and >= 0 (ValueError otherwise: there is no unbounded run).
    ``check=False`` hands back a non-zero exit status instead (the deadline still raises).
    """
    timeout = _deadline(timeout, what)
    child = Child(argv, name=what, cwd=cwd,
                  stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = child.proc.communicate(stdin_data, timeout=timeout)
    except subprocess.TimeoutExpired:
        child.close(grace=1.0)
        raise InfraError(f"{what} did not finish within {timeout:.0f} s") from None
    finally:
        child.close(grace=1.0)
    result = subprocess.CompletedProcess(child.argv, child.proc.returncode, out, err)
    if check and result.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        raise InfraError(f"{what} failed with status {result.returncode}", "\n".join(tail))
    return result
