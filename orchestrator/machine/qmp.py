"""QMP over a unix socket with ``qemu.qmp`` (the only module that imports it).

We use the library's synchronous ``legacy.QEMUMonitorProtocol``: calls are
bounded by a timeout, and events that arrive between calls wait in the
library's queue until :meth:`Qmp.events` drains them into our own list, so none
is lost.  Every command, reply and event goes to a transcript file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from ..core.errors import InfraError

log = logging.getLogger(__name__)

class Qmp:
    def __init__(self, path: Path, transcript: Path, timeout: float,
                 abort: Callable[[], bool] | None = None) -> None:
        """Connect within ``timeout`` s; give up at once when ``abort()`` is true (QEMU died)."""
        self._log = open(transcript, "a", encoding="utf-8")
        self.events_seen: list[dict[str, Any]] = []
        self._mon = QEMUMonitorProtocol(str(path))
        end = time.monotonic() + timeout
        while True:
            try:
                greeting = self._mon.connect(negotiate=True)
                break
            except (QMPError, OSError) as exc:
                if abort is not None and abort():
                    self._log.close()
                    raise InfraError(f"QEMU exited before its QMP socket {path} answered") from None
                if time.monotonic() > end:
                    raise InfraError(f"QMP socket {path} did not answer: {exc}") from None
                time.sleep(0.05)
        self._record("greeting", greeting)
        self._mon.settimeout(timeout)
        self._closed = False

    def _record(self, kind: str, obj: object) -> None:
        self._log.write(json.dumps({"t": time.time(), kind: obj}) + "\n")
        self._log.flush()

    def cmd(self, name: str, **args: object) -> Any:
        self._record("command", {"execute": name, "arguments": args})
        try:
            reply = self._mon.cmd_raw(name, args or None)
        except (QMPError, OSError, TimeoutError) as exc:
            raise InfraError(f"QMP {name} failed: {exc!r}") from None
        self._record("reply", reply)
        if "error" in reply:
            raise InfraError(f"QMP {name}: {reply['error'].get('desc')}")
        self.events()
        return reply.get("return")

    def events(self, wait: float = 0.0) -> list[dict[str, Any]]:
        """Drain pending events into ``events_seen`` and return the new ones."""
        new: list[dict[str, Any]] = []
        first = True
        while True:
            try:
                got = self._mon.get_events(wait=wait if (first and wait > 0) else False)
            except Exception:
                got = []
            first = False
            if not got:
                break
            for ev in got:
                self._record("event", ev)
                new.append(ev)
        self.events_seen.extend(new)
        return new

    def seen(self, name: str) -> dict[str, Any] | None:
        for ev in self.events_seen:
            if ev.get("event") == name:
                return ev
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._mon.close()
        except Exception:  # closing a dead socket: nothing to report
            pass
        self._log.close()
