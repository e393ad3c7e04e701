"""Run control over MI never loses a stop or an interrupt (issue 12, item 3).

Seen live: pokelab sent ``-exec-continue`` and, 0.2 ms later, ``-exec-interrupt``,
before GDB had reported ``*running``; the interrupt was lost, the guest ran on
and pokelab waited 180 s.  ``fakegdb.py`` replays that race with records from a
real captured session; these tests drive the real MiSession and Probe through it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from orchestrator.gdb.mi import MiSession, MiTimeout
from orchestrator.gdb.probe import Probe
from orchestrator.gdb.symbols import KernelSymbolizer

FAKE = Path(__file__).resolve().parent / "fakegdb.py"


def session(tmp_path: Path, timeout: float = 5.0, **script: object) -> MiSession:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    return MiSession([sys.executable, str(FAKE), str(path)], tmp_path / "mi.log", timeout)


def sent(tmp_path: Path) -> list[str]:
    """The MI lines pokelab wrote and the async run-state records GDB gave, in order."""
    out = []
    for line in (tmp_path / "mi.log").read_text().splitlines():
        _t, direction, rec = line.split(" ", 2)
        if direction == ">" or rec.startswith(("*running", "*stopped")):
            out.append(rec.lstrip("0123456789").split(",")[0])
    return out


def test_interrupt_right_after_continue_is_not_lost(tmp_path: Path) -> None:
    """The probe's resume-then-pause with the resume still in flight: the guest stops, at once."""
    probe = Probe(Path("/nonexistent/vmlinux"), "127.0.0.1:1", tmp_path, KernelSymbolizer([]), 4.0)
    probe._mi = mi = session(tmp_path, 4.0, running_delay=0.5)
    try:
        t = time.monotonic()
        probe.resume()
        probe.pause()  # the old pause() sent its interrupt during the 0.5 s window and waited 4 s
        assert time.monotonic() - t < 3.0
        assert mi.state == "stopped"
    finally:
        probe.close()
    assert sent(tmp_path)[:4] == ["-exec-continue", "*running", "-exec-interrupt", "*stopped"]


def test_a_lost_interrupt_is_sent_again(tmp_path: Path) -> None:
    mi = session(tmp_path, drop_interrupts=1)
    try:
        mi.exec_continue()
        rec = mi.exec_interrupt(timeout=5.0, resend_s=0.5)
        assert rec["message"] == "stopped"
    finally:
        mi.close()
    assert sent(tmp_path).count("-exec-interrupt") == 2


def test_interrupt_wait_is_bounded_and_named(tmp_path: Path) -> None:
    mi = session(tmp_path, drop_interrupts=100)
    try:
        mi.exec_continue()
        t = time.monotonic()
        with pytest.raises(MiTimeout, match=r"\*stopped after -exec-interrupt \(sent [3-9] time"):
            mi.exec_interrupt(timeout=1.5, resend_s=0.4)
        assert time.monotonic() - t < 3.0
    finally:
        mi.close()


def test_continue_wait_is_bounded_and_named(tmp_path: Path) -> None:
    mi = session(tmp_path, running_delay=60)
    try:
        with pytest.raises(MiTimeout, match=r"\*running after -exec-continue"):
            mi.exec_continue(timeout=1.0)
    finally:
        mi.close()


def test_interrupt_of_a_stopped_target_returns_its_stop(tmp_path: Path) -> None:
    mi = session(tmp_path)
    try:
        mi.exec_continue()
        first = mi.exec_interrupt(timeout=3.0)
        assert mi.exec_interrupt(timeout=3.0) is first
    finally:
        mi.close()
    assert sent(tmp_path).count("-exec-interrupt") == 1
