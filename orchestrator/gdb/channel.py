"""The record channel: a pipe from the in-GDB recorder straight to the host, beside GDB/MI.

GDB writes its MI console stream one byte per ``write(2)``, escaped, and the
host must parse every record back out of MI (pygdbmi); a ``POKELAB-TRAP``
record is about 1 KB, so each trap cost some 1,000 system calls in GDB and a
character-level parse on the host, on the 2 cores QEMU needs.  Measured on the
6.1 cloud kernel, 10 function-tracer switches with and without the probe,
QEMU 10.2.2: the switch under the probe took 1.13-1.17x its time without it
over the console stream, 1.07-1.09x with records written to a file.

So the recorder writes the records of its breakpoint stops (``POKELAB-TRAP``,
``-BATCH``, ``-OTHER``, ``-POKE``, ``-BLIND``, ``-CPU``, ``-ERROR``) as plain
lines to the write end of a pipe that GDB inherits (``pass_fds``), one
``write`` per record; its answers to the host's calls stay on the console,
where :meth:`MiSession.console` returns them.  Lines arrive here in the order
the recorder wrote them, but not in order with MI's records: a ``*stopped``
can be read before the records written just before it.  :meth:`sync` closes
that gap: it asks the recorder (through MI) to write a marker and waits until
the reader has handled every line before it.

Each line is also written to the MI transcript as the console record it would
have been, so a transcript replays as before (``mi.console_lines``).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable

from ..core.errors import InfraError

log = logging.getLogger(__name__)

#: the recorder's marker line (``pokelab_sync(n)``), answered on the channel
SYNC_TAG = "POKELAB-SYNC"
#: bytes of pipe buffer asked for (F_SETPIPE_SZ; Linux's default ``pipe-max-size`` is 1 MiB): a
#: 36,000-site batch record is ~1.2 MB of hex, and a full pipe stalls GDB and the guest behind it
PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class RecordChannel:
    """One pipe, one reader thread; ``sink(line)`` is called in that thread for every record line.

    ``write_fd`` is for the child (``pass_fds``); call :meth:`child_started` once it runs, so the
    reader sees end-of-file when the child exits.  ``transcript(line)`` (optional) logs each line.
    """

    def __init__(self, sink: Callable[[str], None],
                 transcript: Callable[[str], None] | None = None) -> None:
        self._sink = sink
        self._transcript = transcript
        self._read_fd, self.write_fd = os.pipe()
        try:
            fcntl.fcntl(self.write_fd, _F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe only means GDB waits for us more often
        self._cond = threading.Condition()
        self._synced = 0
        self._numbers = itertools.count(1)
        self._eof = False
        #: record lines read (markers aside), and those ``sink`` raised on (logged, then skipped)
        self.lines = 0
        self.errors = 0
        self._reader = threading.Thread(target=self._read, name="gdb-records", daemon=True)
        self._reader.start()

    def child_started(self) -> None:
        """Close our copy of the write end (the child holds its own): EOF then means the child is gone."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def _read(self) -> None:
        with os.fdopen(self._read_fd, "rb", buffering=PIPE_BYTES) as f:
            for raw in f:
                line = raw.decode(errors="replace").rstrip("\n")
                if not line:
                    continue
                if self._transcript is not None:
                    self._transcript(line)
                if line.startswith(SYNC_TAG + " "):
                    self._synced_to(line)
                    continue
                try:
                    self._sink(line)
                except Exception:  # one bad record must not stop the reader
                    self.errors += 1
                    log.exception("record not handled: %.120s", line)
                with self._cond:
                    self.lines += 1
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _synced_to(self, line: str) -> None:
        try:  # POKELAB-SYNC {"n": 7}
            n = int(json.loads(line.split(" ", 1)[1])["n"])
        except (IndexError, KeyError, TypeError, ValueError):
            return
        with self._cond:
            self._synced = max(self._synced, n)
            self._cond.notify_all()

    def sync(self, ask: Callable[[int], object], timeout: float) -> None:
        """Return once every line the recorder wrote before now has been handled.

        ``ask(n)`` makes the recorder write marker ``n`` (``python pokelab_sync(n)`` over MI).
        InfraError if the marker does not come within ``timeout`` s, or the channel ended first.
        """
        n = next(self._numbers)
        ask(n)
        end = time.monotonic() + timeout
        with self._cond:
            while self._synced < n:
                left = end - time.monotonic()
                if self._eof:
                    raise InfraError("the recorder's record channel closed before its marker came")
                if left <= 0:
                    raise InfraError(f"the recorder's records did not catch up within {timeout:.0f} s")
                self._cond.wait(min(left, 0.5))

    def close(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` s for the child's end (EOF) and the reader to finish what it read.
        True if it did (every record written has been handled)."""
        self.child_started()
        self._reader.join(timeout)
        return not self._reader.is_alive()
