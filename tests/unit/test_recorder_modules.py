"""The in-GDB recorder (orchestrator/gdb/data/) loads as the host sources it, against a stand-in ``gdb``.

``pokelab_gdb.py`` is run as a script (GDB's ``source``) and imports its siblings through
``sys.path``; every ``python pokelab_*(...)`` call the host makes must find its function.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "orchestrator" / "gdb" / "data"
HOST_CALLERS = (ROOT / "orchestrator" / "gdb" / "probe.py", ROOT / "orchestrator" / "jobs" / "bench.py")


def _fake_gdb(out: list[str]) -> types.ModuleType:
    gdb: Any = types.ModuleType("gdb")

    class Error(RuntimeError):
        pass

    class Breakpoint:
        def __init__(self, spec: str, **kw: Any) -> None:
            self.spec, self.enabled = spec, True

        def delete(self) -> None:
            pass

    def parse_and_eval(expr: str) -> Any:
        raise Error(f"No symbol in current context: {expr}")

    gdb.error, gdb.MemoryError, gdb.GdbError = Error, type("MemoryError", (Error,), {}), Error
    gdb.Breakpoint, gdb.BP_BREAKPOINT, gdb.BP_HARDWARE_BREAKPOINT = Breakpoint, 1, 2
    gdb.lookup_global_symbol = gdb.lookup_static_symbol = lambda name: None
    gdb.lookup_type = parse_and_eval
    gdb.parse_and_eval = parse_and_eval
    gdb.write = out.append
    return gdb


@pytest.fixture
def recorder() -> Iterator[tuple[dict[str, Any], list[str]]]:
    out: list[str] = []
    saved_modules, saved_path = dict(sys.modules), list(sys.path)
    sys.modules["gdb"] = _fake_gdb(out)
    try:
        yield runpy.run_path(str(DATA / "pokelab_gdb.py"), run_name="__main__"), out
    finally:
        sys.modules.clear()
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path


def test_every_host_call_has_its_function(recorder: tuple[dict[str, Any], list[str]]) -> None:
    ns, _ = recorder
    called = {m for f in HOST_CALLERS for m in re.findall(r"python (pokelab_\w+)\(", f.read_text())}
    assert {"pokelab_setup", "pokelab_inflight", "pokelab_bench_stops"} <= called
    assert all(callable(ns.get(name)) for name in called), called - set(ns)


def test_a_kernel_without_the_handler_is_reported_unsupported(
        recorder: tuple[dict[str, Any], list[str]]) -> None:
    ns, out = recorder
    ns["pokelab_setup"](json.dumps({"inject": None}))
    ns["pokelab_inflight"]()
    tags = [line.split(" ", 1) for line in out]
    assert [t for t, _ in tags] == ["POKELAB-SETUP", "POKELAB-INFLIGHT"]
    assert "poke_int3_handler" in json.loads(tags[0][1])["unsupported"]
    assert json.loads(tags[1][1]) == {"live": False, "pending": []}


def test_records_go_to_the_channel_and_replies_to_the_console(
        recorder: tuple[dict[str, Any], list[str]]) -> None:
    """With a record channel (orchestrator/gdb/channel.py) the stops' records and the sync marker go
    down the pipe, one write each; what answers a host call stays on GDB's console."""
    ns, out = recorder
    r, w = os.pipe()
    try:
        ns["pokelab_setup"](json.dumps({"inject": None, "channel_fd": w}))
        ns["pokelab_sync"](7)
        ns["_emit"]("POKELAB-TRAP", {"cpu": 1})
        ns["pokelab_inflight"]()
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            piped = f.read().decode().splitlines()
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    assert piped == ['POKELAB-SYNC {"n":7}', 'POKELAB-TRAP {"cpu":1}']
    assert [line.split(" ", 1)[0] for line in out] == ["POKELAB-SETUP", "POKELAB-INFLIGHT"]
