"""After every way a ``pokelab`` run can end, nothing it started is left running.

Each run gets its own ``--artifacts`` dir.  While the CLI runs we record every
descendant (pid + start time, so a reused pid is not mistaken for ours); after
it ends we check that each is gone, and scan all of /proc for any process whose
command line names the run's artifacts dir, QEMU socket dir or ports.
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.host.cache import cache_dir
from orchestrator.kernels.catalog import Catalog
from orchestrator.kernels.debian import cached_spec

pytestmark = pytest.mark.vm

POKELAB = Path(sys.executable).parent / "pokelab"
BOOT_DEADLINE = 50.0  # boot to SSH is 5-10 s under TCG; others may boot VMs at the same time
EXIT_DEADLINE = 40.0  # graceful shutdown: QMP quit, then SIGTERM/SIGKILL of QEMU
PDEATH_DEADLINE = 10.0  # QEMU's PR_SET_PDEATHSIG after the runner is SIGKILLed


# --------------------------------------------------------------------------- /proc helpers


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid``, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2:].split()
    return rest[0], int(rest[19])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for t in tasks:
        try:
            kids += map(int, Path(f"/proc/{pid}/task/{t}/children").read_text().split())
        except OSError:
            pass
    return kids


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int
    argv: tuple[str, ...]

    def alive(self) -> bool:
        st = _stat(self.pid)
        return st is not None and st[1] == self.start and st[0] not in ("Z", "X")

    @property
    def name(self) -> str:
        return os.path.basename(self.argv[0]) if self.argv else "?"


class Tracker:
    """Records every descendant of one process while it runs (polled by a thread)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[tuple[int, int], Proc] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.snapshot()
            self._stop.wait(0.05)

    def snapshot(self) -> None:
        todo, done = [self.root], set()
        while todo:
            p = todo.pop()
            for k in _children(p):
                if k in done:
                    continue
                done.add(k)
                todo.append(k)
                st, argv = _stat(k), _cmdline(k)
                if st is not None and argv:
                    # refreshed each time: a child caught between fork and exec shows our argv
                    with self._lock:
                        self.seen[(k, st[1])] = Proc(k, st[1], tuple(argv))

    def procs(self) -> list[Proc]:
        with self._lock:
            return list(self.seen.values())

    def qemu(self) -> list[Proc]:
        return [p for p in self.procs() if p.name.startswith("qemu-system")]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _procs_mentioning(needles: list[str]) -> list[tuple[int, list[str]]]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        argv = _cmdline(int(entry))
        joined = "\0".join(argv)
        if any(n in joined for n in needles):
            st = _stat(int(entry))
            if st is not None and st[0] not in ("Z", "X"):
                found.append((int(entry), argv))
    return found


# --------------------------------------------------------------------------- the CLI run


@dataclass
class Run:
    proc: subprocess.Popen[str]
    artifacts: Path
    tracker: Tracker
    out: queue.Queue[str | None] = field(default_factory=queue.Queue)
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def wait_stdout(self, needle: str, deadline: float) -> None:
        end = time.monotonic() + deadline
        while True:
            left = end - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {needle!r} on stdout within {deadline:.0f} s; "
                            f"stdout {self.stdout}, stderr {self.stderr}")
            try:
                line = self.out.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(5)
                pytest.fail(f"pokelab exited ({self.proc.returncode}) before printing {needle!r}; "
                            f"stdout {self.stdout}, stderr {self.stderr}")
            if needle in line:
                return

    def wait_exit(self, deadline: float) -> int:
        try:
            return self.proc.wait(deadline)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pokelab did not exit within {deadline:.0f} s; stderr {self.stderr}")

    def repro(self) -> tuple[Path, int, int]:
        """(QEMU socket dir, gdb port, ssh port) from the run's repro.sh."""
        text = (self.artifacts / "repro.sh").read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith("exec "))
        argv = shlex.split(line)
        qmp = argv[argv.index("-qmp") + 1]
        workdir = Path(qmp.split(",")[0].removeprefix("unix:")).parent
        gdb = int(argv[argv.index("-gdb") + 1].rsplit(":", 1)[1])
        netdev = argv[argv.index("-netdev") + 1]
        fwd = next(p for p in netdev.split(",") if p.startswith("hostfwd="))
        ssh = int(fwd.split(":")[2].split("-")[0])
        return workdir, gdb, ssh


def _pump(stream, sink: list[str], q: queue.Queue[str | None] | None) -> None:  # type: ignore[no-untyped-def]
    for line in stream:
        sink.append(line.rstrip("\n"))
        if q is not None:
            q.put(line)
    if q is not None:
        q.put(None)


@pytest.fixture
def start_cli(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    default = Catalog.load().default
    if cached_spec(default, cache_dir()) is None:
        pytest.skip(f"default kernel {default.id} not cached (run `pokelab images`)")
    runs: list[Run] = []
    # A launcher that ignores SIGINT (`make test &` from a non-interactive shell) hands that on
    # through exec, and Python then leaves SIGINT ignored: pokelab would never see the Ctrl-C
    # these tests send.  The children start with the default disposition instead.
    inherited = signal.getsignal(signal.SIGINT)
    if inherited == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def start(*args: str, tail: tuple[str, ...] = ()) -> Run:
        art = tmp_path / f"art-{len(runs)}"
        proc = subprocess.Popen(
            [str(POKELAB), *args, "--artifacts", str(art), *tail],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        run = Run(proc, art, Tracker(proc.pid))
        threading.Thread(target=_pump, args=(proc.stdout, run.stdout, run.out), daemon=True).start()
        threading.Thread(target=_pump, args=(proc.stderr, run.stderr, None), daemon=True).start()
        runs.append(run)
        return run

    try:
        yield start
    finally:
        if inherited == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    # whatever happened in the test: end what is ours, by pid, and remove QEMU's socket dir
    for run in runs:
        run.tracker.stop()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(10)
        for p in run.tracker.procs():
            if p.alive():
                os.kill(p.pid, signal.SIGKILL)
        try:
            shutil.rmtree(run.repro()[0], ignore_errors=True)
        except (OSError, StopIteration, ValueError):
            pass


def assert_nothing_left(run: Run, deadline: float = 0.0, workdir_removed: bool = True) -> None:
    run.tracker.stop()
    procs = run.tracker.procs()
    qemus = [p for p in procs if p.name.startswith("qemu-system")]
    assert len(qemus) == 1, f"expected to have seen one QEMU child, saw {procs}"
    workdir, gdb, ssh = run.repro()
    assert str(workdir) in "\0".join(qemus[0].argv)
    needles = [str(run.artifacts), str(workdir), f"tcp:127.0.0.1:{gdb}",
               f"hostfwd=tcp:127.0.0.1:{ssh}-"]
    end = time.monotonic() + deadline
    while True:
        alive = [p for p in procs if p.alive()]
        strays = _procs_mentioning(needles)
        if not alive and not strays:
            break
        if time.monotonic() >= end:
            pytest.fail(f"left running: {alive} / by cmdline: {strays}")
        time.sleep(0.1)
    if workdir_removed:
        assert not workdir.exists(), f"QEMU socket dir {workdir} left behind"


# --------------------------------------------------------------------------- the cases


def test_run_cmd_leaves_nothing(start_cli) -> None:  # type: ignore[no-untyped-def]
    run = start_cli("run-cmd", tail=("--", "true"))
    rc = run.wait_exit(BOOT_DEADLINE)
    assert rc == 0, run.stderr
    assert_nothing_left(run)


def test_run_cmd_status_passes_through(start_cli) -> None:  # type: ignore[no-untyped-def]
    run = start_cli("run-cmd", "--smp", "2", tail=("--", "sh", "-c", "echo out; echo err >&2; exit 5"))
    rc = run.wait_exit(BOOT_DEADLINE)
    time.sleep(0.2)  # let the pump threads drain the pipes
    assert rc == 5, run.stderr
    assert run.stdout == ["out"]
    assert run.stderr == ["err"]
    assert_nothing_left(run)


def _boot_keep(start_cli) -> Run:  # type: ignore[no-untyped-def]
    run = start_cli("boot", "--keep")
    run.wait_stdout("the guest stays up until Ctrl-C", BOOT_DEADLINE)
    assert any(line.startswith("ssh -i ") for line in run.stdout)
    assert any(line.startswith("gdb ") and "target remote 127.0.0.1:" in line
               for line in run.stdout)
    qemus = [p for p in run.tracker.qemu() if p.alive()]
    assert len(qemus) == 1, run.tracker.procs()
    return run


@pytest.mark.parametrize("sig, rc, message", [
    (signal.SIGINT, 130, "pokelab: interrupted"),
    (signal.SIGTERM, 143, "pokelab: terminated"),
], ids=["SIGINT", "SIGTERM"])
def test_boot_keep_signal_leaves_nothing(start_cli, sig: int, rc: int, message: str) -> None:  # type: ignore[no-untyped-def]
    run = _boot_keep(start_cli)
    run.proc.send_signal(sig)
    assert run.wait_exit(EXIT_DEADLINE) == rc, run.stderr
    time.sleep(0.2)
    assert run.stderr == [message], run.stderr
    assert "Traceback" not in "\n".join(run.stderr), run.stderr
    assert_nothing_left(run)


def test_boot_keep_sigkill_takes_qemu_along(start_cli) -> None:  # type: ignore[no-untyped-def]
    run = _boot_keep(start_cli)
    run.proc.kill()
    assert run.wait_exit(10) == -signal.SIGKILL
    # nobody could clean up: QEMU must die through PR_SET_PDEATHSIG on its own
    assert_nothing_left(run, deadline=PDEATH_DEADLINE, workdir_removed=False)


@pytest.mark.parametrize("sig, rc", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_boot_leaves_nothing(start_cli, sig: int, rc: int) -> None:  # type: ignore[no-untyped-def]
    """Interrupted while the kernel is still booting (QEMU up, no SSH yet)."""
    run = start_cli("boot", "--keep")
    console = run.artifacts / "console.log"
    end = time.monotonic() + BOOT_DEADLINE
    while True:
        if console.is_file() and "Linux version" in console.read_text(errors="replace"):
            break
        if run.proc.poll() is not None or time.monotonic() > end:
            pytest.fail(f"no kernel banner on the console; stderr {run.stderr}")
        time.sleep(0.05)
    assert not any("stays up" in line for line in run.stdout), "booted too fast to test"
    run.proc.send_signal(sig)
    assert run.wait_exit(EXIT_DEADLINE) == rc, run.stderr
    time.sleep(0.2)
    assert "Traceback" not in "\n".join(run.stderr), run.stderr
    assert len(run.stderr) == 1, run.stderr
    assert_nothing_left(run)


@pytest.mark.parametrize("sig, rc, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_repro_writes_an_interrupted_verdict(start_cli, sig: int, rc: int, name: str) -> None:  # type: ignore[no-untyped-def]
    """Interrupted while the probe judges traps: GDB and QEMU go, verdict.json stays, never PASS."""
    import json

    run = start_cli("repro", "ftrace-function", "--repeat", "40")
    end = time.monotonic() + 240
    while not any("cycle 1/40" in line for line in run.stderr):
        if run.proc.poll() is not None or time.monotonic() > end:
            pytest.fail(f"no first cycle; stderr {run.stderr}")
        time.sleep(0.1)
    run.proc.send_signal(sig)
    assert run.wait_exit(EXIT_DEADLINE) == rc, run.stderr
    time.sleep(0.2)
    assert "Traceback" not in "\n".join(run.stderr), run.stderr
    assert any(line.startswith(f"pokelab: interrupted by {name}: verdict written to ") for line in run.stderr)
    v = json.loads((run.artifacts / "verdict.json").read_text())
    assert v["interrupted"] is True and v["verdict"] == "INCONCLUSIVE", v.get("reasons")
    assert v["traps_judged"] > 0 and v["violations"] == 0
    assert v["reasons"][0].startswith(f"interrupted by {name} after {v['traps_judged']} trap(s) judged")
    gdbs = [p for p in run.tracker.procs() if p.name == "gdb"]
    assert gdbs, run.tracker.procs()
    assert_nothing_left(run)  # QEMU and GDB both gone
