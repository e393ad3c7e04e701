"""Fakes at the edges of the run pipeline, for unit tests that need no VM, no GDB and no cache.

* :class:`FakeVm` stands in for ``machine.vm.Vm`` where ``run.probe_run`` boots it: a guest
  that boots (or not), answers guest commands (requirement checks, the load generator's
  counts, evidence counts), and can show a real captured oops on its console.
* :class:`FakeProbe` is a real ``gdb.probe.Probe`` (the ledger parses and the judge judges
  every trap) whose GDB side is replaced: ``attach`` replays a whole MI transcript captured
  from a live probed run (tests/data/mi/), so its traps are real traps of a 6.1 kernel.
* :class:`ScriptedExecute` is an ``run.execute.Execute`` for the jobs (repro, nightly,
  bisect): each call gives the next scripted verdict as a RunResult written through
  ``RunResult.write`` (as ``execute`` does), or raises what the script says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core import crash
from orchestrator.core.errors import InfraError, RunInterrupted
from orchestrator.gdb.mi import console_lines, parse_transcript
from orchestrator.gdb.probe import Probe
from orchestrator.kernels import loadgen
from orchestrator.machine.ssh import Result
from orchestrator.machine.vm import VmSpec
from orchestrator.run.request import RunRequest
from orchestrator.run.result import RunResult

DATA = Path(__file__).resolve().parent.parent / "data"
#: `pokelab probe` on 6.1.0-56-cloud-amd64: 80 traps judged, 0 violations (66 at __do_sys_getpid)
PASS_MI = DATA / "mi" / "probe-6.1-pass.mi.log"
#: the same with ``--inject wrong-target``: 73 judged, 15 violations, every one an injected trap
VIOLATION_MI = DATA / "mi" / "probe-6.1-wrong-target.mi.log"
#: a NULL dereference in __do_sys_getpid on 6.1: "BUG: kernel NULL pointer dereference ...", "Oops ..."
OOPS_LOG = DATA / "console" / "bug-null-deref-6.1.log"
#: an RCU stall and a soft lockup in __text_poke under a busy probe (6.1)
STALL_LOG = DATA / "console" / "rcu-stall-soft-lockup-probe-6.1.log"

RELEASE = "6.1.0-56-cloud-amd64"
GETPID = 0xFFFFFFFF810B0F40
#: the text symbols of the transcripts' sites (6.1.0-56-cloud-amd64's System.map; sizes rounded up)
SYMBOLS = [(0xFFFFFFFF810B0F40, 0x20, "__do_sys_getpid"), (0xFFFFFFFF810D1AD0, 0x100, "ttwu_do_wakeup"),
           (0xFFFFFFFF81A10AF0, 0x1000, "__schedule")]


@dataclass
class Guest:
    """What the fake guest does.  ``boot``: raised by ``wait_ready`` (None: it boots);
    ``missing``: requirements the guest reports missing; ``crash_on``: after the first guest
    command containing this text the console shows ``crash_log``; ``interrupt_on``: SIGINT
    (KeyboardInterrupt) arrives during the first guest command containing this text."""

    boot: BaseException | None = None
    missing: tuple[str, ...] = ()
    crash_on: str | None = None
    crash_log: Path = OOPS_LOG
    interrupt_on: str | None = None
    evidence: int = 3
    load_iterations: int = 1000


class FakeVm:
    """What ``run_probed`` and ``ScenarioBody`` use of a ``Vm``, with no QEMU behind it."""

    def __init__(self, spec: VmSpec, guest: Guest) -> None:
        self.spec = spec
        self.guest = guest
        self.timeouts = spec.timeouts
        self.release: str | None = None
        self.console: list[str] = ["POKELAB-READY " + RELEASE]
        self.commands: list[str] = []
        self.started = self.closed = False
        self.gdb_address = "127.0.0.1:1"

    def start(self) -> None:
        self.spec.artifacts.mkdir(parents=True, exist_ok=True)
        self.started = True

    def wait_ready(self) -> str:
        if self.guest.boot is not None:
            raise self.guest.boot
        self.release = RELEASE
        return RELEASE

    def run(self, command: str, timeout: float | None = None, stdin: bytes | None = None) -> Result:
        self.commands.append(command)
        g = self.guest
        if g.interrupt_on is not None and g.interrupt_on in command:
            g.interrupt_on = None
            raise KeyboardInterrupt
        if g.crash_on is not None and g.crash_on in command:
            g.crash_on = None
            self.console += g.crash_log.read_text(errors="replace").replace("\r", "").splitlines()
        if "MISSING" in command:  # run.scenario.guest_check_script
            return Result(0, "".join(f"MISSING {r}\n" for r in g.missing), "")
        if command == loadgen.STOP_COMMAND:
            cpus = range(1, self.spec.smp) if self.spec.smp > 1 else [0]
            return Result(0, "".join(f"loadgen getpid cpu={c} iterations={g.load_iterations}\n"
                                     for c in cpus), "")
        if "grep -c" in command:  # an evidence count
            return Result(0, f"{g.evidence}\n", "")
        return Result(0, "", "")

    def check(self, command: str, timeout: float | None = None) -> str:
        res = self.run(command, timeout)
        if res.status != 0:
            raise InfraError(f"guest command failed ({res.status}): {command}")
        return res.stdout

    def crashes(self) -> list[crash.Crash]:
        return crash.scan(self.console)

    def qemu_exited(self) -> str | None:
        return None

    def tb_flush_count(self) -> int | None:
        return None  # as under KVM: no translation cache

    def close(self) -> None:
        self.closed = True
        if self.started:
            (self.spec.artifacts / "console.log").write_text("\n".join(self.console) + "\n")


class FakeProbe(Probe):
    """A Probe whose GDB is a captured transcript: ``attach`` feeds its console lines to the real
    ledger (setup report, traps, recorder stats); reading guest memory is not offered.
    ``lost``: the recorder's stats say it lost that many stops."""

    def __init__(self, *args: Any, transcript: Path = PASS_MI, lost: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transcript = transcript
        self.lost = lost
        self.attached = self.closed = False

    def attach(self) -> None:
        for line in console_lines(parse_transcript(self.transcript.read_text())):
            self.ingest(line)
        self.attached = True

    def refresh_ops(self) -> list[dict[str, Any]]:
        return []

    def resume(self) -> None:
        pass

    def pause(self) -> None:
        pass

    @contextmanager
    def paused(self) -> Iterator[None]:
        yield

    def check_sites(self) -> list[Any]:
        return []

    def recorder_stats(self) -> dict[str, Any]:
        return {**self.stats, **({"lost": self.lost} if self.lost else {})}

    def close(self) -> None:
        self.closed = True
        if not self._trap_log.closed:
            self._trap_log.close()


# --------------------------------------------------------------------------- a fake Execute


@dataclass(frozen=True)
class Interrupt:
    """A run cut short by a signal: its verdict.json is written (``interrupted``) and
    RunInterrupted carries the result, as ``execute`` does."""

    verdict: str = "INCONCLUSIVE"
    signal_name: str = "SIGINT"
    code: int = 130


#: a scripted outcome: a verdict, an Interrupt, or an exception to raise
Outcome = str | Interrupt | BaseException

REASONS = {"PASS": "80 trap(s) judged, 0 violations, 4 site read-backs matched",
           "FAIL": "2 emulation violation(s)", "CRASH": "BUG: kernel NULL pointer dereference in x",
           "BOOT_FAIL": "guest did not boot: no readiness marker within 300 s",
           "INFRA": "QEMU exited at start: x", "INCONCLUSIVE": "0 trap(s) judged, fewer than the floor of 1",
           "UNSUPPORTED": "missing in the guest: symbol:x"}


def record(request: RunRequest, verdict: str, **more: Any) -> dict[str, Any]:
    """A run's verdict dict as ``execute`` makes one (the keys jobs read)."""
    kid = request.kernel.kernel or "6.1"
    judged = 0 if verdict in ("BOOT_FAIL", "INFRA", "UNSUPPORTED") else 80
    return {"scenario": request.scenario.name, "repeat": request.scenario.repeat, "kernel_id": kid,
            "kernel": f"{kid}-release", "inject": request.inject, "smp": request.vm.smp,
            "verdict": verdict, "reasons": [REASONS[verdict]], "traps_judged": judged,
            "violations": 2 if verdict == "FAIL" else 0, "artifacts": str(request.artifacts),
            "phases": {"total_s": 2.5}, **more}


class ScriptedExecute:
    """An ``Execute``: each call takes the next outcome of ``script`` (a list, or a function of
    the request); ``requests``: every request it was given, in order."""

    def __init__(self, script: Sequence[Outcome] | Callable[[RunRequest], Outcome]) -> None:
        self.script = script
        self.requests: list[RunRequest] = []
        self._lock = threading.Lock()

    def __call__(self, request: RunRequest) -> RunResult:
        with self._lock:
            n = len(self.requests)
            self.requests.append(request)
        outcome = self.script(request) if callable(self.script) else self.script[n]
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, Interrupt):
            out = record(request, outcome.verdict, interrupted=True)
            out["reasons"] = [f"interrupted by {outcome.signal_name} after 80 trap(s) judged"]
            result = RunResult.from_record(out)
            result.write()
            exc = RunInterrupted(out, outcome.code, outcome.signal_name)
            exc.result = result
            raise exc
        result = RunResult.from_record(record(request, outcome))
        result.write()
        return result
