"""The int3 probe: GDB attached to the guest's gdbstub, recording and judging every text_poke trap.

The recording happens inside GDB (``data/pokelab_gdb.py``: internal
breakpoints whose ``stop()`` reads what it needs and resumes at once); each
trap reaches us as one ``POKELAB-TRAP`` line down the record pipe (``channel.py``), which the ledger
(``ledger.py``) parses, judges (``judge.judge``) and appends to the trap log.
While the guest is paused on purpose (``paused()``) we read memory: the text
at patched sites after a batch (``readback.py``), and the registered
ftrace_ops with their trampolines.  This module drives GDB: attach, run
control, the recorder's calls, detach.
"""

import json
import logging
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core import census as census_mod
from ..core.budget import DEFAULT as DEFAULT_BUDGET
from ..core.budget import TrapBudget
from ..core.buildid import elf_build_id, notes_build_id
from ..core.errors import InfraError, Unsupported, UsageError
from ..core.trapdata import INJECT_EVERY, INJECTIONS, LayoutError, TextPokeLoc, layout_from_setup
from .channel import RecordChannel
from .mi import MiError, MiSession, gdb_argv
from .readback import SiteReadback, in_flight_from_report
from .symbols import KernelSymbolizer

log = logging.getLogger(__name__)

GDB_SCRIPT = Path(__file__).resolve().parent / "data" / "pokelab_gdb.py"
#: s for the interrupt and ``-target-detach`` when the probe ends (GDB answers at once; not scaled)
DETACH_S = 5.0

#: Functions a wrong-target injection emulates a call to, first present wins
#: (a bare ``ret``: calling it from an fentry site is harmless, as in the 2019 RFC).
STUB_CANDIDATES = ("ftrace_stub", "ftrace_stub_graph", "ftrace_regs_caller")



class Probe(SiteReadback):
    """Owns one GDB session attached to one VM's gdbstub.

    The records it receives are kept by ``TrapLedger`` (ledger.py), the sites are
    read back by ``SiteReadback`` (readback.py); this class drives GDB.
    """

    def __init__(self, vmlinux: Path, gdb_address: str, artifacts: Path,
                 symbolizer: KernelSymbolizer, timeout: float, *, inject: str | None = None,
                 inject_every: int = INJECT_EVERY, hardware: bool = False,
                 census: census_mod.Census | None = None,
                 budget: TrapBudget = DEFAULT_BUDGET) -> None:
        if inject is not None and inject not in INJECTIONS:
            raise UsageError(f"unknown injection '{inject}' (one of: {', '.join(INJECTIONS)})")
        super().__init__(artifacts, symbolizer, census)
        self.vmlinux = vmlinux
        self.address = gdb_address
        self.timeout = timeout
        self.inject = inject
        self.inject_every = inject_every
        self.hardware = hardware
        self.budget = budget
        self._mi: MiSession | None = None
        self._channel: RecordChannel | None = None
        self._running = False

    # -- attach ---------------------------------------------------------------
    def attach(self) -> None:
        """Start GDB, check the vmlinux against the running kernel, place the recorder, resume."""
        argv = gdb_argv(self.vmlinux)
        self._channel = channel = RecordChannel(self._on_console, self._log_record)
        try:
            self._mi = mi = MiSession(argv, self.artifacts / "mi.log", self.timeout,
                                      pass_fds=(channel.write_fd,))
        except BaseException:
            channel.close(timeout=1.0)
            raise
        args_fd = channel.write_fd
        channel.child_started()
        mi.add_console_hook(self._on_console)
        mi.command("-gdb-set mi-async on")
        start = mi.async_count
        try:
            mi.command(f"-target-select remote {self.address}", timeout=self.timeout)
        except MiError as exc:
            raise InfraError(f"GDB could not attach to {self.address}: {exc.title}") from None
        if mi.wait_async(lambda r: r.get("message") == "stopped", self.timeout, start) is None:
            raise InfraError(f"GDB did not report *stopped within {self.timeout:.0f} s of attaching "
                             f"to {self.address}")
        self._check_build_id()
        mi.console(f"source {GDB_SCRIPT}")
        args = {"channel_fd": args_fd, "inject": self.inject, "inject_every": self.inject_every,
                "hardware": self.hardware, "stub_candidates": list(STUB_CANDIDATES),
                "budget": self.budget.args()}
        mi.console(f"python pokelab_setup('{json.dumps(args)}')")
        with self._lock:
            info = self.setup_info
        if not info:
            raise InfraError("the GDB-side recorder did not report its setup")
        if info.get("unsupported"):
            raise Unsupported(f"kernel not supported by the probe: {info['unsupported']}")
        try:
            self.layout = layout_from_setup(info)
        except LayoutError as exc:
            raise Unsupported(f"kernel not supported by the probe: {exc}") from None
        log.info("probe on %s (%d return points), descriptor %s, %s", info["handler"],
                 len(info["exits"]), info.get("desc"), info.get("loc_type"))
        self.refresh_ops()
        self.resume()

    def _check_build_id(self) -> None:
        """Refuse a running kernel whose build-id (read from guest memory) differs from the vmlinux's."""
        with open(self.vmlinux, "rb") as f:
            want = elf_build_id(f)
        try:
            start = int(self.evaluate("(unsigned long)&__start_notes"), 0)
            stop = int(self.evaluate("(unsigned long)&__stop_notes"), 0)
        except (MiError, ValueError):
            raise UsageError(f"{self.vmlinux} has no __start_notes: "
                             "not a kernel vmlinux with symbols") from None
        live = notes_build_id(self.read_memory(start, min(stop - start, 4096)))
        if want is None or live is None or live != want:
            raise UsageError(f"the vmlinux does not match the running kernel: build-id "
                             f"{(want or 'none')[:16]} in the file, {(live or 'none')[:16]} in the guest")
        self.build_id = live

    # -- run control --------------------------------------------------------------
    def resume(self) -> None:
        """Let the guest run; returns once GDB reported ``*running`` (MiSession.exec_continue)."""
        assert self._mi is not None
        self._mi.exec_continue()
        self._running = True

    def pause(self) -> None:
        """Stop the guest; returns once GDB reported ``*stopped`` (MiSession.exec_interrupt)."""
        assert self._mi is not None
        if not self._running:
            return
        self._mi.exec_interrupt()
        self._running = False
        self.sync()

    def sync(self) -> None:
        """Return once every record the recorder wrote so far has been taken in (the record channel
        is not ordered with MI: :mod:`orchestrator.gdb.channel`).  InfraError past the deadline."""
        mi, channel = self._mi, self._channel
        if mi is None or channel is None:
            return
        channel.sync(lambda n: mi.console(f"python pokelab_sync({n})"), self.timeout)

    def _log_record(self, line: str) -> None:
        if self._mi is not None:
            self._mi.log_console(line)

    def finish(self) -> None:
        """Take in every record written so far, then close the trap log (:meth:`TrapLedger.finish`)."""
        self.sync()
        super().finish()

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def read_memory(self, addr: int, length: int) -> bytes:
        assert self._mi is not None
        rec = self._mi.command(f"-data-read-memory-bytes {addr:#x} {length}")
        chunks = (rec.get("payload") or {}).get("memory") or []
        return bytes.fromhex("".join(c["contents"] for c in chunks))[:length]

    def _gdb_call(self, tag: str, call: str) -> dict[str, Any]:
        """Run one recorder function in GDB and return its ``tag`` line (InfraError if none came)."""
        assert self._mi is not None
        with self._lock:
            self._replies.pop(tag, None)
        self._mi.console(call)
        with self._lock:
            reply = self._replies.pop(tag, None)
        if reply is None:
            raise InfraError(f"the GDB-side recorder did not answer {call.split('(')[0]}")
        return reply

    def read_many(self, spans: list[tuple[int, int]]) -> list[bytes | None]:
        """The bytes at each (address, length), read inside GDB in one call (guest stopped)."""
        out: list[bytes | None] = []
        for i in range(0, len(spans), 512):
            chunk = [[a, n] for a, n in spans[i:i + 512]]
            reply = self._gdb_call("POKELAB-READ", f"python pokelab_read('{json.dumps(chunk)}')")
            data = reply.get("data", [])
            out.extend(bytes.fromhex(h) if isinstance(h, str) else None for h in data)
        return out

    def record_batches(self, on: bool) -> bool:
        """Turn the batch recorder on/off (pausing the guest); False if this kernel has no batch hook."""
        with self.paused():
            hook = bool(self._gdb_call("POKELAB-BATCHES", f"python pokelab_batches({on})").get("hook"))
        with self._lock:
            self._batches_on = on
        return hook

    def evaluate(self, expr: str) -> str:
        assert self._mi is not None
        rec = self._mi.command(f'-data-evaluate-expression "{expr}"')
        return str((rec.get("payload") or {}).get("value", ""))

    def _in_flight(self) -> tuple[dict[int, TextPokeLoc], list[tuple[int, int]]]:
        """While paused: the live batch's entries by site, and plain writes entered but not returned."""
        assert self._mi is not None
        with self._lock:
            self._replies.pop("POKELAB-INFLIGHT", None)
        try:
            self._mi.console("python pokelab_inflight()")
        except MiError as exc:
            log.warning("cannot read what is in flight: %s", exc)
        with self._lock:
            rep = self._replies.pop("POKELAB-INFLIGHT", None) or {}
        return in_flight_from_report(rep, self.layout)


    # -- checks while paused ------------------------------------------------------
    def refresh_ops(self) -> list[dict[str, Any]]:
        """Name the trampolines of registered ftrace_ops (guest must be stopped or will be)."""
        assert self._mi is not None
        with self._lock:
            self._ops_report = None
        self._mi.console("python pokelab_ops()")
        with self._lock:
            report: dict[str, Any] = self._ops_report or {}
        ops = list(report.get("ops", []))
        for o in ops:
            if o.get("trampoline"):
                owner = self.sym.data_at.get(o["ops"])
                if owner is None:
                    func = (self.sym(o["func"]) or f"{o['func']:#x}").removesuffix("+0x0")
                    owner = f"ops({func})"
                self.sym.add_region(f"{owner}.trampoline", o["trampoline"],
                                    o.get("trampoline_size") or 0x100)
                self.census.add_region(o["trampoline"], o.get("trampoline_size") or 0x100,
                                       census_mod.ops_user(self.sym(o["func"])), f"{owner}.trampoline")
        return ops


    def recorder_stats(self) -> dict[str, Any]:
        assert self._mi is not None
        self._mi.console("python pokelab_stats()")
        with self._lock:
            return dict(self.stats)


    def close(self) -> None:
        """Detach (the guest keeps running) and end GDB.  Idempotent."""
        mi, self._mi = self._mi, None
        if mi is None:
            return
        try:
            if self._running:
                self.pause_quietly(mi)
            mi.command("-target-detach", timeout=DETACH_S)
        except InfraError:
            pass
        mi.close()
        if self._channel is not None and not self._channel.close():
            log.warning("the recorder's record channel did not end with GDB")
        if not self._trap_log.closed:
            self._trap_log.close()

    def pause_quietly(self, mi: MiSession) -> None:
        try:
            mi.exec_interrupt(timeout=DETACH_S, resend_s=1.0)
        except InfraError:
            pass
        self._running = False

    def summary(self) -> dict[str, Any]:
        with self._lock:
            c = self.counts
            costs = sorted(self.trap_costs_ms)
            return {
                "traps_seen": c.seen + c.other,
                "traps_recorded": c.seen,
                "not_text_poke": c.other,
                "traps_judged": c.judged,
                "violations": c.violations,
                "batch_violations": c.batch_violations,
                "skipped": c.skipped,
                "injected": c.injected,
                "injected_flagged": c.injected_flagged,
                "false_flags": c.false_flags,
                "recorder_errors": c.errors,
                # records the host could not take in: malformed, or raised in the ledger (channel)
                "bad_records": c.bad_records + (self._channel.errors if self._channel else 0),
                "opcodes": dict(c.opcodes),
                "users": census_mod.order_users(c.users),
                "batch_users": census_mod.order_users(c.batch_users),
                "sites": {f"{s:#x}": {"name": v.name, "traps": v.traps}
                          for s, v in sorted(self.sites.items()) if v.traps},
                "text_checks": len(self.text_checks),
                "text_mismatches": sum(1 for t in self.text_checks if not t.ok),
                "text_unchecked": self.unchecked_sites + self.blind_unchecked,
                "text_freed": len(self.freed_sites),
                "text_in_flight": len(self.in_flight_sites),
                "text_pokes": self.pokes,
                "text_poked_sites": self.poked_sites,
                "text_poke_unknown": len(self.poke_unknown),
                "batches": self.batches,
                "budget": (self.stats.get("budget") if self.stats else None) or self.setup_info.get("budget"),
                "trap_cost_ms_median": statistics.median(costs) if costs else None,
                "handler": self.setup_info.get("handler"),
                "descriptor": self.setup_info.get("desc"),
                "cpu_map": {str(t): c for t, c in sorted(self.cpu_map.items())},
                "cpu_map_notes": list(self.cpu_map_notes),
                "trap_log": str(self.trap_log_path),
            }
