"""The record channel (orchestrator/gdb/channel.py): a real pipe, its reader thread, the sync marker."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from orchestrator.core.errors import InfraError
from orchestrator.gdb.channel import RecordChannel

TRAP = 'POKELAB-TRAP {"cpu":1,"pre":"' + "00" * 168 + '"}'


def _writer(ch: RecordChannel) -> int:
    """A stand-in for GDB's inherited copy of the write end."""
    fd = os.dup(ch.write_fd)
    ch.child_started()
    return fd


@contextmanager
def _open(sink: Callable[[str], None], log: Callable[[str], None] | None = None,
          ) -> Iterator[tuple[RecordChannel, int]]:
    """A channel and its writer's fd; the writer closes and the reader ends on the way out."""
    ch = RecordChannel(sink, log)
    fd = _writer(ch)
    try:
        yield ch, fd
    finally:
        os.close(fd)
    assert ch.close(timeout=5.0)


def test_sync_returns_only_after_every_earlier_record_was_handled() -> None:
    got: list[str] = []
    logged: list[str] = []
    gate = threading.Event()

    def sink(line: str) -> None:
        gate.wait(5.0)  # a slow host: the records sit in the pipe
        got.append(line)

    with _open(sink, logged.append) as (ch, fd):
        for _ in range(50):
            os.write(fd, (TRAP + "\n").encode())

        def ask(n: int) -> None:  # what pokelab_sync(n) writes, behind the records
            os.write(fd, f'POKELAB-SYNC {{"n":{n}}}\n'.encode())
            gate.set()

        ch.sync(ask, timeout=10.0)
        assert got == [TRAP] * 50
        assert logged[-1] == 'POKELAB-SYNC {"n":1}' and len(logged) == 51


def test_a_marker_that_never_comes_is_a_bounded_infra_error() -> None:
    with _open(lambda line: None) as (ch, _fd):
        with pytest.raises(InfraError, match="did not catch up within 0 s"):
            ch.sync(lambda n: None, timeout=0.2)


def test_the_channel_ending_before_the_marker_is_an_infra_error() -> None:
    ch = RecordChannel(lambda line: None)
    fd = _writer(ch)
    with pytest.raises(InfraError, match="closed before its marker"):
        ch.sync(lambda n: os.close(fd), timeout=5.0)


def test_a_record_the_sink_cannot_handle_does_not_stop_the_reader() -> None:
    got: list[str] = []

    def sink(line: str) -> None:
        if "bad" in line:
            raise ValueError(line)
        got.append(line)

    ch = RecordChannel(sink)
    fd = _writer(ch)
    os.write(fd, b"POKELAB-TRAP bad\n" + (TRAP + "\n").encode())
    os.close(fd)
    assert ch.close(timeout=5.0)
    assert got == [TRAP] and ch.errors == 1 and ch.lines == 2
