"""``Ssh.run``'s deadline is one for the whole call, not one per phase (open, exec, send, read).

A fake transport and channel on a fake clock: each blocking step advances the clock by what
it is told to cost, and records the timeout it was given.  Nothing here claims anything about
a guest: only the arithmetic of the deadline is under test.
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.errors import InfraError
from orchestrator.machine.ssh import run_on


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


class Chan:
    def __init__(self, clock: Clock, cost: dict[str, float], finish_at: float | None) -> None:
        self.clock, self.cost, self.finish_at = clock, cost, finish_at
        self.timeouts: list[float] = []
        self.sent = b""
        self.closed = False

    def _step(self, what: str) -> None:
        took = self.cost.get(what, 0.0)
        if took >= self.timeouts[-1]:
            self.clock.now += self.timeouts[-1]
            raise TimeoutError(what)
        self.clock.now += took

    def settimeout(self, t: float) -> None:
        self.timeouts.append(t)

    def exec_command(self, command: str) -> None:
        self._step("exec")

    def send(self, data: bytes) -> int:
        self._step("send")
        n = min(len(data), 1000)
        self.sent += data[:n]
        return n

    def shutdown_write(self) -> None:
        pass

    def recv_ready(self) -> bool:
        return False

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return self.finish_at is not None and self.clock.now >= self.finish_at

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class Transport:
    def __init__(self, clock: Clock, cost: dict[str, float], finish_after: float | None) -> None:
        self.clock, self.cost, self.finish_after = clock, cost, finish_after
        self.open_timeout: float | None = None
        self.chan: Chan | None = None

    def open_session(self, timeout: float) -> Any:
        self.open_timeout = timeout
        self.clock.now += self.cost.get("open", 0.0)
        start = self.clock.now
        self.chan = Chan(self.clock, self.cost,
                         None if self.finish_after is None else start + self.finish_after)
        return self.chan


def _run(cost: dict[str, float], finish_after: float | None, timeout: float = 10.0,
         stdin: bytes | None = None) -> tuple[Clock, Transport, Any]:
    clock = Clock()
    t = Transport(clock, cost, finish_after)
    start = clock.now
    try:
        res: Any = run_on(t, "true", timeout, stdin, clock=clock, sleep=clock.sleep)
    except InfraError as exc:
        res = exc
    clock.now -= start  # elapsed
    return clock, t, res


def test_each_phase_gets_only_what_is_left() -> None:
    clock, t, res = _run({"open": 4.0, "exec": 3.0, "send": 1.0}, finish_after=None, stdin=b"x" * 1500)
    assert isinstance(res, InfraError) and "timed out after 10 s" in res.title
    assert t.open_timeout == 10.0
    assert t.chan is not None and t.chan.closed
    # exec was given the 6 s left after open; the two sends 3 s and 2 s; the read loop the rest
    assert t.chan.timeouts[:3] == [6.0, 3.0, 2.0]
    assert clock.now == pytest.approx(10.0, abs=0.01)  # one deadline, not 3 x 10 s


def test_slow_phases_that_each_fit_still_share_the_deadline() -> None:
    # open 4 s, exec 4 s, the command ends 8 s after the channel opened: 12 s in all; a deadline
    # per phase (each < 10 s, the read timed from the open) would have let it succeed
    clock, _t, res = _run({"open": 4.0, "exec": 4.0}, finish_after=8.0)
    assert isinstance(res, InfraError)
    assert clock.now <= 10.0 + 0.01


def test_a_command_within_its_deadline_succeeds() -> None:
    clock, t, res = _run({"open": 1.0, "exec": 1.0, "send": 0.5}, finish_after=3.0, stdin=b"y" * 2500)
    assert res.status == 0
    assert t.chan is not None and t.chan.sent == b"y" * 2500 and t.chan.closed
    assert 4.0 <= clock.now < 10.0
