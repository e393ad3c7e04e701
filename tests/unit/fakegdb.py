"""A scripted stand-in for ``gdb --interpreter=mi3`` attached to a guest, for unit tests.

It speaks MI on stdin/stdout with records copied from a real captured session
(tests/data/mi/probe-6.1-pass.mi.log) and replays the run-control behaviour
seen with QEMU's gdbstub (issue 12): after ``-exec-continue`` GDB answers
``^running`` at once but reports ``*running`` only once the resume went out;
an ``-exec-interrupt`` that arrives in between is answered ``^done`` and lost
(the guest runs on).  Script (a JSON file, argv[1]):

* ``running_delay``: seconds between ``^running`` and ``*running`` (the resume in flight)
* ``drop_interrupts``: interrupts lost even while running (a lost Ctrl-C)
* ``memory``: {address (hex): contents (hex)} readable; any other read is
  ``^error,msg="Unable to read memory."`` (GDB's answer for unmapped guest memory)
* ``expressions``: {expression: value}; others ``^error`` "No symbol ... in current context."
* ``console``: {CLI command: [console lines it prints]}
* ``phases``: [{"memory"/"expressions"/"console" entries}, ...]: while stopped for the
  N-th time (1-based), phase N-1 (or the last one) is laid over the tables above: the
  guest changed while it ran (a module unloaded, an ftrace_ops unregistered)
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path

CAPTURE = Path(__file__).resolve().parent.parent / "data" / "mi" / "probe-6.1-pass.mi.log"


def captured(prefix: str) -> str:
    """The first GDB output record of the captured session starting with ``prefix``."""
    for line in CAPTURE.read_text().splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] == "<" and parts[2].startswith(prefix):
            return parts[2]
    raise SystemExit(f"fakegdb: no {prefix} record in {CAPTURE}")


def later(delay: float, func: Callable[[], None]) -> None:
    timer = threading.Timer(delay, func)
    timer.daemon = True  # -gdb-exit ends the process at once
    timer.start()


class FakeGdb:
    def __init__(self, script: dict) -> None:  # type: ignore[type-arg]
        self.script = script
        self.state = "stopped"
        self.drops = int(script.get("drop_interrupts", 0))
        self.stops = 0
        self.lock = threading.Lock()
        self.running_rec = captured("*running")
        self.stopped_rec = captured('*stopped,reason="signal-received"')

    def out(self, *lines: str) -> None:
        with self.lock:
            for line in lines:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def _running(self) -> None:
        with self.lock:
            if self.state != "resuming":
                return
            self.state = "running"
        self.out(self.running_rec)

    def _stop(self) -> None:
        with self.lock:
            if self.state != "running":
                return
            self.state = "stopped"
            self.stops += 1
        self.out('~"\\nThread 2 received signal SIGINT, Interrupt.\\n"', self.stopped_rec)

    def table(self, key: str) -> dict:  # type: ignore[type-arg]
        """``script[key]`` with the current phase's entries laid over it."""
        phases = self.script.get("phases") or [{}]
        phase = phases[min(max(self.stops - 1, 0), len(phases) - 1)]
        return {**self.script.get(key, {}), **phase.get(key, {})}

    def handle(self, line: str) -> bool:
        m = re.match(r"^(\d*)(-\S+)\s*(.*)$", line)
        if not m:
            self.out('^error,msg="not MI"', "(gdb)")
            return True
        tok, cmd, rest = m.groups()
        if cmd == "-gdb-exit":
            self.out(f"{tok}^exit")
            return False
        if cmd == "-exec-continue":
            with self.lock:
                resume = self.state == "stopped"
                if resume:
                    self.state = "resuming"
            self.out(f"{tok}^running", "(gdb)")
            if resume:
                later(float(self.script.get("running_delay", 0.0)), self._running)
            return True
        if cmd == "-exec-interrupt":
            self.out(f"{tok}^done", "(gdb)")
            with self.lock:
                lost = self.state == "resuming" or (self.state == "running" and self.drops > 0)
                if self.state == "running" and self.drops > 0:
                    self.drops -= 1
            if not lost:
                later(0.05, self._stop)
            return True
        if cmd == "-data-read-memory-bytes":
            addr_s, _, length_s = rest.partition(" ")
            addr, length = int(addr_s, 0), int(length_s)
            for base_s, hexdata in self.table("memory").items():
                base, data = int(base_s, 16), bytes.fromhex(hexdata)
                if base <= addr and addr + length <= base + len(data):
                    chunk = data[addr - base:addr - base + length].hex()
                    self.out(f'{tok}^done,memory=[{{begin="{addr:#x}",offset="0x0000000000000000",'
                             f'end="{addr + length:#x}",contents="{chunk}"}}]', "(gdb)")
                    return True
            self.out(f'{tok}^error,msg="Unable to read memory."', "(gdb)")
            return True
        if cmd == "-data-evaluate-expression":
            expr = json.loads(rest) if rest.startswith('"') else rest
            value = self.table("expressions").get(expr)
            if value is None:
                self.out(f'{tok}^error,msg="No symbol \\"{expr.split()[0]}\\" in current context."', "(gdb)")
            else:
                self.out(f"{tok}^done,value={json.dumps(str(value))}", "(gdb)")
            return True
        if cmd == "-interpreter-exec":
            cli = json.loads(rest.split(" ", 1)[1])
            for text in self.table("console").get(cli, []):
                self.out("~" + json.dumps(text + "\n"))
            self.out(f"{tok}^done", "(gdb)")
            return True
        self.out(f"{tok}^done", "(gdb)")
        return True


def main() -> None:
    gdb = FakeGdb(json.loads(Path(sys.argv[1]).read_text()))
    gdb.out("(gdb)")
    for line in sys.stdin:
        if not gdb.handle(line.strip()):
            break


if __name__ == "__main__":
    main()
