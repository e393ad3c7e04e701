"""A GDB/MI session over pygdbmi (the only module that imports it).

pygdbmi's own ``write()`` returns when GDB goes quiet, not when the reply to
*your* command arrives, and a reader that stops draining GDB's stdout lets the
pipe fill until GDB (and the guest behind it) stalls.  So: GDB is an owned
child process; one reader thread drains its stdout all the time and parses each
line with ``pygdbmi.gdbmiparser``; commands carry numbered tokens and wait for
their own result record with a deadline; async records (``*stopped``,
``*running``, ``=...``) go to a list that callers wait on by predicate; console
stream lines go to hooks (the probe's trap records arrive that way).  Every line
in and out goes to a transcript file.

Run control never loses a stop or an interrupt: :meth:`MiSession.exec_continue`
returns only once GDB reported ``*running`` (an ``-exec-interrupt`` sent between
``^running`` and ``*running`` was seen dropped: the guest ran on, issue 12), and
:meth:`MiSession.exec_interrupt` waits for ``*stopped``, re-sending the interrupt
until its deadline.  Every wait is bounded and its error names what it waited for.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pygdbmi import gdbmiparser

from ..core.errors import InfraError
from ..host import procs

log = logging.getLogger(__name__)

Record = dict[str, Any]
StreamHook = Callable[[str], None]


class MiError(InfraError):
    """GDB answered ^error to a command."""


class MiTimeout(InfraError):
    """A bounded wait on GDB expired; the title names the command and the record waited for."""


#: re-send ``-exec-interrupt`` this often (s) while no ``*stopped`` came, at most
INTERRUPT_RESEND_S = 5.0


class MiSession:
    def __init__(self, argv: Sequence[str], transcript: Path, timeout: float,
                 pass_fds: Sequence[int] = ()) -> None:
        self.timeout = timeout
        #: "running" or "stopped" as GDB last reported it (``*running``/``*stopped``); None before either
        self.state: str | None = None
        self._last_stop: Record | None = None
        self._tokens = itertools.count(1)
        self._cond = threading.Condition()
        self._results: dict[int, Record] = {}
        self.async_records: list[Record] = []
        self._hooks: list[StreamHook] = []
        self._console_lines: list[str] = []
        self._eof = False
        self._transcript = open(transcript, "a", encoding="utf-8", errors="replace")
        self._tlock = threading.Lock()
        self._child = procs.Child(argv, name="gdb", stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds)
        self._reader = threading.Thread(target=self._read_stdout, name="gdb-mi", daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_stderr, name="gdb-err", daemon=True)
        self._err_reader.start()
        self._closed = False

    # -- reading ------------------------------------------------------------
    def _log(self, direction: str, line: str) -> None:
        with self._tlock:
            self._transcript.write(f"{time.monotonic():.6f} {direction} {line.rstrip()}\n")

    def log_console(self, line: str) -> None:
        """Write ``line`` to the transcript as the console-stream record GDB would print for it
        (the record channel's lines: a transcript then replays as one stream)."""
        self._log("<", "~" + json.dumps(line + "\n"))

    def _read_stdout(self) -> None:
        stdout = self._child.proc.stdout
        assert stdout is not None
        for raw in stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if not line:
                continue
            self._log("<", line)
            try:
                rec = gdbmiparser.parse_response(line)
            except Exception:
                rec = {"type": "output", "payload": line, "message": None}
            self._dispatch(rec)
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        stderr = self._child.proc.stderr
        assert stderr is not None
        for raw in stderr:
            self._log("!", raw.decode(errors="replace"))

    def _dispatch(self, rec: Record) -> None:
        kind = rec.get("type")
        if kind == "result" and rec.get("token") is not None:
            with self._cond:
                self._results[int(rec["token"])] = rec
                self._cond.notify_all()
        elif kind == "notify" or (kind == "result" and rec.get("token") is None):
            with self._cond:
                if kind == "notify" and rec.get("message") in ("running", "stopped"):
                    self.state = rec["message"]
                    if self.state == "stopped":
                        self._last_stop = rec
                self.async_records.append(rec)
                self._cond.notify_all()
        elif kind == "console":
            for line in console_lines([rec]):
                for hook in list(self._hooks):
                    hook(line)
                with self._cond:
                    self._console_lines.append(line)
                    self._cond.notify_all()

    def add_console_hook(self, hook: StreamHook) -> None:
        """``hook(line)`` for every console-stream line, called in the reader thread."""
        self._hooks.append(hook)

    # -- commands -----------------------------------------------------------
    def send(self, command: str) -> int:
        """Write one MI command with a fresh token; return the token."""
        if self._eof or self._child.poll() is not None:
            raise InfraError("GDB has exited")
        token = next(self._tokens)
        line = f"{token}{command}"
        self._log(">", line)
        stdin = self._child.proc.stdin
        assert stdin is not None
        try:
            stdin.write((line + "\n").encode())
            stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise InfraError(f"GDB's stdin is closed: {exc}") from None
        return token

    def wait_result(self, token: int, timeout: float | None = None, what: str = "") -> Record:
        end = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while token not in self._results:
                left = end - time.monotonic()
                if left <= 0:
                    raise MiTimeout(f"GDB did not answer {what or token} within "
                                     f"{(self.timeout if timeout is None else timeout):.0f} s")
                if self._eof:
                    raise InfraError(f"GDB exited before answering {what or token}")
                self._cond.wait(min(left, 0.5))
            return self._results.pop(token)

    def command(self, command: str, timeout: float | None = None) -> Record:
        """Send and wait for the result record; MiError on ^error."""
        rec = self.wait_result(self.send(command), timeout, command)
        if rec.get("message") == "error":
            msg = (rec.get("payload") or {}).get("msg", "?")
            raise MiError(f"GDB: {command.split()[0]}: {msg}")
        return rec

    def console(self, cli: str, timeout: float | None = None) -> list[str]:
        """Run a CLI command through MI; return the console lines it printed."""
        with self._cond:
            start = len(self._console_lines)
        escaped = cli.replace("\\", "\\\\").replace('"', '\\"')
        self.command(f'-interpreter-exec console "{escaped}"', timeout)
        with self._cond:
            return self._console_lines[start:]

    def wait_async(self, predicate: Callable[[Record], bool], timeout: float,
                   start: int = 0) -> tuple[int, Record] | None:
        """The first async record at index >= ``start`` that matches, or None at the deadline."""
        end = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.async_records):
                    if predicate(self.async_records[i]):
                        return i, self.async_records[i]
                    i += 1
                left = end - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                self._cond.wait(min(left, 0.5))

    # -- run control ----------------------------------------------------------
    def exec_continue(self, timeout: float | None = None) -> None:
        """``-exec-continue``, then wait until GDB reports ``*running`` (or a ``*stopped`` after it).

        ``^running`` alone does not mean the target runs: an ``-exec-interrupt``
        sent before ``*running`` can reach the gdbstub before the resume and be
        lost.  MiTimeout names the record that did not come.
        """
        limit = self.timeout if timeout is None else timeout
        with self._cond:
            start = len(self.async_records)
        self.command("-exec-continue", limit)
        got = self.wait_async(lambda r: r.get("type") == "notify"
                              and r.get("message") in ("running", "stopped"), limit, start)
        if got is None:
            raise self._expired("*running after -exec-continue", limit)

    def exec_interrupt(self, timeout: float | None = None,
                       resend_s: float = INTERRUPT_RESEND_S) -> Record:
        """Stop the target: ``-exec-interrupt`` until ``*stopped`` comes, re-sent every ``resend_s``.

        Returns the ``*stopped`` record (at once if GDB already reported the
        target stopped).  MiTimeout after ``timeout`` s, saying how often the
        interrupt was sent; MiError if GDB refuses it while not stopped.
        """
        limit = self.timeout if timeout is None else timeout
        end = time.monotonic() + limit
        sent = 0
        with self._cond:
            start = len(self.async_records)
            if self.state == "stopped" and self._last_stop is not None:
                return self._last_stop

        def stopped(r: Record) -> bool:
            return r.get("type") == "notify" and r.get("message") == "stopped"

        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise self._expired(f"*stopped after -exec-interrupt (sent {sent} time(s))", limit)
            try:
                self.command("-exec-interrupt", left)
                sent += 1
            except MiError:
                got = self.wait_async(stopped, 0.0, start)
                if got is not None:
                    return got[1]  # it stopped on its own meanwhile
                raise
            got = self.wait_async(stopped, min(resend_s, max(0.0, end - time.monotonic())), start)
            if got is not None:
                return got[1]
            if sent == 1:
                log.warning("no *stopped within %.1f s of -exec-interrupt: sending it again", resend_s)

    def _expired(self, what: str, limit: float) -> InfraError:
        if self._eof:
            return InfraError(f"GDB exited while waiting for {what}")
        return MiTimeout(f"GDB did not report {what} within {limit:.1f} s "
                         f"(GDB last reported the target {self.state or 'in no state yet'})")

    @property
    def async_count(self) -> int:
        with self._cond:
            return len(self.async_records)

    # -- ending -------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Ask GDB to exit (detaching leaves the guest running), then make sure it is gone."""
        if self._closed:
            return
        self._closed = True
        if self._child.poll() is None and not self._eof:
            try:
                self.send("-gdb-exit")
            except InfraError:
                pass
            self._child.wait(timeout)
        self._child.close(grace=1.0)
        self._reader.join(timeout=2.0)
        self._err_reader.join(timeout=2.0)
        with self._tlock:
            self._transcript.close()


def gdb_argv(vmlinux: Path | None, gdb: str = "gdb") -> list[str]:
    argv = [gdb, "--nx", "--quiet", "--interpreter=mi3",
            "-iex", "set pagination off", "-iex", "set confirm off",
            "-iex", "set width 0", "-iex", "set auto-load no",
            "-iex", "set breakpoint always-inserted on"]
    if vmlinux is not None:
        argv.append(str(vmlinux))
    return argv


def parse_transcript(text: str) -> list[Record]:
    """The GDB output records of a transcript written by MiSession (lines ``<time> < <record>``)."""
    out: list[Record] = []
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] == "<":
            try:
                out.append(gdbmiparser.parse_response(parts[2]))
            except Exception:
                continue
    return out


def console_lines(records: list[Record]) -> list[str]:
    """The console-stream lines among parsed records, as the live reader hands them to hooks."""
    lines: list[str] = []
    for rec in records:
        if rec.get("type") == "console" and isinstance(rec.get("payload"), str):
            lines.extend(rec["payload"].splitlines())
    return lines
