"""The serial console: a unix socket driven by pexpect, logged to a file.

A reader thread owns the pexpect child and drains the socket all the time (a
console nobody reads stalls the guest's printk), writing every byte to the log
and every complete line to an in-memory list.  Other threads wait on that list
by regular expression with a deadline; they never read the socket themselves.
This is the only module that imports pexpect.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pexpect.fdpexpect

from ..core.errors import InfraError


def clean_line(raw: str) -> str:
    """Strip the serial console's ``\\r`` and ANSI escapes (busybox prints some at its prompt)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw).replace("\r", "")


class Console:
    def __init__(self, path: Path, logfile: Path, connect_timeout: float) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        end = time.monotonic() + connect_timeout
        while True:
            try:
                self._sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > end:
                    self._sock.close()
                    raise InfraError(f"serial console socket {path} did not appear") from None
                time.sleep(0.02)
        self._log = open(logfile, "wb")
        self._child = pexpect.fdpexpect.fdspawn(self._sock.fileno(), timeout=None)
        self._child.logfile_read = self._log
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="console", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                i = self._child.expect(["\n", pexpect.TIMEOUT, pexpect.EOF], timeout=0.2)
            except (OSError, ValueError):
                i = 2
            if i == 0:
                line = clean_line(self._child.before.decode(errors="replace"))
                with self._cond:
                    self._lines.append(line)
                    self._cond.notify_all()
            elif i == 2:
                with self._cond:
                    self._eof = True
                    self._cond.notify_all()
                return
            self._log.flush()

    @property
    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def text(self) -> str:
        return "\n".join(self.lines)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])

    def wait_for(self, pattern: str, timeout: float, start: int = 0,
                 abort: Callable[[], str | None] | None = None) -> re.Match[str] | None:
        """First line from index ``start`` on matching ``pattern``, or None at the deadline/EOF.

        ``abort`` is polled while waiting; a non-None answer ends the wait early (None returned).
        """
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for idx in range(seen, len(self._lines)):
                    m = rx.search(self._lines[idx])
                    if m:
                        return m
                seen = len(self._lines)
                left = end - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                if abort is not None and abort() is not None:
                    return None
                self._cond.wait(min(left, 0.2))

    def send(self, text: str) -> None:
        self._child.send(text)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2.0)
        try:
            self._sock.close()
        except OSError:
            pass
        self._log.close()
