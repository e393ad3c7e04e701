"""The int3 probe: GDB attached to the guest's gdbstub, recording and judging every text_poke trap.

The recording happens inside GDB (``data/pokelab_gdb.py``: internal
breakpoints whose ``stop()`` reads what it needs and resumes at once); each
trap reaches us as one ``POKELAB-TRAP`` console line, which we parse, judge
(``judge.judge``) and append to the trap log.  While the guest is paused on
purpose (``paused()``) we read memory: the text at patched sites after a batch,
and the registered ftrace_ops with their trampolines.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core import census as census_mod
from ..core import decode
from ..core.budget import DEFAULT as DEFAULT_BUDGET
from ..core.budget import TrapBudget
from ..core.buildid import elf_build_id, notes_build_id
from ..core.errors import InfraError, Unsupported, UsageError
from ..core.judge import check_final_text, check_in_flight, check_poke_in_flight, check_vector, judge
from ..core.trapdata import (
    INJECTIONS,
    Layout,
    LayoutError,
    RecordError,
    TextPokeLoc,
    TrapRecord,
    parse_batch_record,
    parse_layout,
    parse_text_poke_loc,
    parse_trap_record,
)
from .mi import MiError, MiSession, gdb_argv
from .symbols import KernelSymbolizer

log = logging.getLogger(__name__)

GDB_SCRIPT = Path(__file__).resolve().parent / "data" / "pokelab_gdb.py"
#: s for the interrupt and ``-target-detach`` when the probe ends (GDB answers at once; not scaled)
DETACH_S = 5.0

#: Functions a wrong-target injection emulates a call to, first present wins
#: (a bare ``ret``: calling it from an fentry site is harmless, as in the 2019 RFC).
STUB_CANDIDATES = ("ftrace_stub", "ftrace_stub_graph", "ftrace_regs_caller")


def _int3_before(obj: dict[str, Any]) -> frozenset[int]:
    """The sites a ``POKELAB-BATCH`` record says held an int3 before the batch (empty if none said).  Pure."""
    raw = obj.get("int3_before")
    if not isinstance(raw, list):
        return frozenset()
    out = set()
    for x in raw:
        try:
            out.add(int(str(x), 16))
        except ValueError:
            continue
    return frozenset(out)


def read_trap_log(path: str | Path | None) -> list[dict[str, Any]]:
    """The records of a ``traps.jsonl`` (an unreadable file or garbled line gives nothing)."""
    if not path:
        return []
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    out: list[dict[str, Any]] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def layout_from_setup(info: dict[str, Any]) -> Layout:
    """The judge's Layout from the GDB side's DWARF report (LayoutError if incomplete)."""
    rf = info.get("regs_fields") or {}
    regs: dict[str, Any] = {k: rf[k][0] for k in ("ip", "cs", "flags", "sp", "ss") if k in rf}
    regs["size"] = info.get("regs_size")
    return parse_layout({"loc_size": info.get("loc_size"), "fields": info.get("loc_fields"),
                         "stext": info.get("stext"), "regs": regs})


@dataclass
class SiteState:
    """The last text written at one site (from the descriptor) and where it was seen."""

    written: bytes
    name: str
    traps: int = 0
    #: the text before the last write (the previous write seen), None if not known
    before: bytes | None = None
    #: who wrote it last: "batch" (an int3 batch) or "poke" (a plain text_poke())
    by: str = "batch"


@dataclass
class TextCheck:
    site: int
    name: str
    ok: bool
    reason: str
    bytes_read: str


@dataclass(frozen=True)
class TextRegion:
    """Kernel text that can go away: a module's text (core or init) or an ftrace trampoline."""

    #: "module", "module-init" or "trampoline"
    kind: str
    #: who owns it, for reasons: the module's name, or the trampoline's name (ops(...).trampoline)
    owner: str
    start: int
    end: int

    def __contains__(self, addr: object) -> bool:
        return isinstance(addr, int) and self.start <= addr < self.end

    def __str__(self) -> str:
        what = {"module": "module", "module-init": "the init text of module"}.get(self.kind)
        return f"{what} {self.owner}" if what else self.owner


#: ``struct module``'s text, newest layout first: (kind, base field, size field).
#: 6.4+ (ac3b43283923 "module: replace module_layout with module_memory"): mem[MOD_TEXT],
#: mem[MOD_INIT_TEXT] (enum mod_mem_type: MOD_TEXT = 0, MOD_INIT_TEXT = 4); before:
#: core_layout and init_layout (struct module_layout, kernel/module/main.c in 6.1).
MODULE_TEXT_FIELDS: tuple[tuple[tuple[str, str, str], ...], ...] = (
    (("module", "mem[0].base", "mem[0].size"), ("module-init", "mem[4].base", "mem[4].size")),
    (("module", "core_layout.base", "core_layout.text_size"),
     ("module-init", "init_layout.base", "init_layout.text_size")),
)

#: the most modules walked in the kernel's ``modules`` list (a longer walk means a bad read)
MAX_MODULES = 1024

_GDB_STRING = re.compile(r'^"((?:[^"\\]|\\.)*)"')


def region_name(name: str, site: int, region: TextRegion | None) -> str:
    """A site's name: the symbolizer's, else its offset in a module's text (``mod.text+0x50``).  Pure."""
    if name not in ("", "?") or region is None or not region.kind.startswith("module"):
        return name
    part = "init.text" if region.kind == "module-init" else "text"
    return f"{region.owner}.{part}+{site - region.start:#x}"


def freed_reason(site: int, live: list[TextRegion], was: TextRegion | None,
                 seen_trampolines: list[TextRegion], modules_known: bool) -> str | None:
    """Why the text at ``site`` is gone (not to be read back), or None if it may be read.  Pure.

    ``live``: the module texts and trampolines that exist now; ``was``: the region the
    site lay in when it was last seen live; ``seen_trampolines``: every trampoline seen
    in this run; ``modules_known``: ``live`` holds the module list (the walk worked).
    """
    if any(site in r for r in live):
        return None
    if was is not None and (was.kind == "trampoline" or modules_known):
        return f"{was} " + {"trampoline": "was freed (its ftrace_ops unregistered)",
                            "module": "was unloaded: its text was freed",
                            "module-init": "was freed when the module's init ended"}.get(was.kind, "is gone")
    for r in seen_trampolines:
        if site in r:
            return f"{r} was freed (its ftrace_ops unregistered)"
    return None


@dataclass
class Counts:
    seen: int = 0  # stops at the handler that we recorded in full
    other: int = 0  # stops that were not text_poke traps (counted, not judged)
    judged: int = 0
    violations: int = 0
    skipped: int = 0
    injected: int = 0
    injected_flagged: int = 0
    false_flags: int = 0
    errors: int = 0
    bad_records: int = 0
    batch_violations: int = 0  # batches whose vector broke an invariant (also in violations)
    opcodes: dict[str, int] = field(default_factory=dict)
    #: judged traps and batches by text_poke user (census.USERS)
    users: dict[str, int] = field(default_factory=dict)
    batch_users: dict[str, int] = field(default_factory=dict)


def in_flight_from_report(rep: dict[str, Any], layout: Layout | None
                          ) -> tuple[dict[int, TextPokeLoc], list[tuple[int, int]]]:
    """Parse ``POKELAB-INFLIGHT {"live", "n", "entries", "pending": [[addr, len], ...]}``:
    (the live vector's entries by site, the plain writes entered but not returned).
    A malformed report counts as nothing in flight (every mismatch stays one)."""
    live: dict[int, TextPokeLoc] = {}
    if rep.get("live") and layout is not None:
        try:
            batch = parse_batch_record({"n": rep.get("n"), "entries": rep.get("entries")}, layout)
            live = {e.site: e for e in batch.entries}
        except (RecordError, LayoutError) as exc:
            log.warning("malformed in-flight report: %s", exc)
    pending: list[tuple[int, int]] = []
    for p in rep.get("pending") or []:
        try:
            pending.append((int(p[0]), int(p[1])))
        except (TypeError, ValueError, IndexError):
            log.warning("malformed pending write in the in-flight report: %r", p)
    return live, pending


class Probe:
    """Owns one GDB session attached to one VM's gdbstub."""

    def __init__(self, vmlinux: Path, gdb_address: str, artifacts: Path,
                 symbolizer: KernelSymbolizer, timeout: float, *, inject: str | None = None,
                 inject_every: int = 2, hardware: bool = False,
                 census: census_mod.Census | None = None,
                 budget: TrapBudget = DEFAULT_BUDGET) -> None:
        if inject is not None and inject not in INJECTIONS:
            raise UsageError(f"unknown injection '{inject}' (one of: {', '.join(INJECTIONS)})")
        self.vmlinux = vmlinux
        self.address = gdb_address
        self.artifacts = artifacts
        self.sym = symbolizer
        #: who wrote each site (empty tables: every site is "unknown" unless named)
        self.census = census or census_mod.Census(census_mod.KernelTables())
        self.timeout = timeout
        self.inject = inject
        self.inject_every = inject_every
        self.hardware = hardware
        self.budget = budget
        #: host arrival time and number of guest stops of each recorder record (trap: entry and
        #: return, batch: one), for the stop rate around a stall report
        self._stop_times: deque[tuple[float, int]] = deque(maxlen=200_000)
        self.layout: Layout | None = None
        self.setup_info: dict[str, Any] = {}
        self.counts = Counts()
        self.sites: dict[int, SiteState] = {}
        self.dirty_sites: set[int] = set()
        #: sites of the latest batch that held an int3 before it began (``_other_owners_int3``)
        self.int3_before: frozenset[int] = frozenset()
        self.text_checks: list[TextCheck] = []
        self.trap_costs_ms: list[float] = []
        self.violations: list[dict[str, Any]] = []
        self.batches = 0
        self.unchecked_sites = 0
        #: sites not read back because their text is gone: {"site", "name", "reason"}
        self.freed_sites: list[dict[str, str]] = []
        #: the region each site outside the core text lay in when last seen live
        self._site_region: dict[int, TextRegion] = {}
        #: every trampoline seen in this run, by start address
        self._trampolines: dict[int, TextRegion] = {}
        self._core_text: tuple[int, int] | None = None
        self._module_fields: tuple[tuple[str, str, str], ...] | None = None
        #: patched sites not read back because the budget went blind before the check
        self.blind_unchecked = 0
        #: sites read while a batch or a plain write was in flight: {"site", "name", "reason"}
        #: (not checked then; read again at the next check)
        self.in_flight_sites: list[dict[str, str]] = []
        #: plain text_poke() writes (outside an int3 batch) seen, and the sites they rewrote
        self.pokes = 0
        self.poked_sites = 0
        #: sites whose expected text became unknown (a plain write longer than reported)
        self.poke_unknown: list[dict[str, str]] = []
        self.stats: dict[str, Any] = {}
        #: GDB thread -> Linux CPU whose per-CPU refs are read (6.16+), from POKELAB-CPU lines
        self.cpu_map: dict[int, int] = {}
        self.cpu_map_notes: list[str] = []
        self._ops_report: dict[str, Any] | None = None
        self._replies: dict[str, dict[str, Any]] = {}
        #: False while the batch recorder is off: a trap shows one write, not the last one
        self._batches_on = True
        #: set by the MI reader thread when a violation is ingested; the main thread polls it
        #: (``--gdb`` stops there; MI commands must not be sent from the reader thread)
        self.violation_seen = threading.Event()
        self._lock = threading.Lock()
        self._event = threading.Condition(self._lock)
        self.trap_log_path = artifacts / "traps.jsonl"
        self._trap_log = open(self.trap_log_path, "w", encoding="utf-8")
        self._mi: MiSession | None = None
        self._running = False
        self._t0 = time.monotonic()

    # -- attach ---------------------------------------------------------------
    def attach(self) -> None:
        """Start GDB, check the vmlinux against the running kernel, place the recorder, resume."""
        argv = gdb_argv(self.vmlinux)
        self._mi = mi = MiSession(argv, self.artifacts / "mi.log", self.timeout)
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
        args = {"inject": self.inject, "inject_every": self.inject_every,
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

    # -- what the recorder reports ------------------------------------------------
    def ingest(self, line: str) -> None:
        """Take one console line from the recorder (live, or replayed from a transcript)."""
        self._on_console(line)
        if line.startswith("POKELAB-SETUP ") and self.layout is None:
            info = self.setup_info
            if info and not info.get("unsupported"):
                self.layout = layout_from_setup(info)

    def _on_console(self, line: str) -> None:
        tag, _, body = line.partition(" ")
        if not tag.startswith("POKELAB-"):
            return
        try:
            obj = json.loads(body)
        except ValueError:
            with self._lock:
                self.counts.bad_records += 1
            return
        if tag in ("POKELAB-TRAP", "POKELAB-BATCH", "POKELAB-OTHER"):
            with self._lock:
                self._stop_times.append((time.monotonic(), 2 if tag == "POKELAB-TRAP" else 1))
        if tag == "POKELAB-TRAP":
            self._on_trap(obj)
        elif tag == "POKELAB-BATCH":
            self._on_batch(obj)
        elif tag == "POKELAB-OTHER":
            with self._lock:
                self.counts.other += 1
        elif tag == "POKELAB-BLIND":
            # the trap budget stopped watching the rest of a burst: batches we will not see may
            # rewrite any site, so what we expect at the sites patched so far is no longer known
            with self._lock:
                self.blind_unchecked += len(self.dirty_sites)
                self.dirty_sites.clear()
        elif tag == "POKELAB-ERROR":
            log.warning("recorder error: %s", obj)
            with self._lock:
                self.counts.errors += 1
        elif tag == "POKELAB-SETUP":
            with self._lock:
                self.setup_info = obj
        elif tag == "POKELAB-CPU":
            with self._lock:
                self.cpu_map[int(obj.get("thread", 0))] = int(obj.get("cpu", -1))
                if obj.get("note"):
                    self.cpu_map_notes.append(f"thread {obj.get('thread')}: {obj['note']}")
            if obj.get("note"):
                log.warning("vCPU/CPU mapping corrected: thread %s -> cpu %s (%s)",
                            obj.get("thread"), obj.get("cpu"), obj["note"])
        elif tag == "POKELAB-STATS":
            with self._lock:
                self.stats = obj
        elif tag == "POKELAB-POKE":
            self._on_poke(obj)
        elif tag in ("POKELAB-READ", "POKELAB-BATCHES", "POKELAB-INFLIGHT"):
            with self._lock:
                self._replies[tag] = obj
        elif tag == "POKELAB-OPS":
            with self._lock:
                self._ops_report = obj
                self._event.notify_all()

    def _on_batch(self, obj: dict[str, Any]) -> None:
        """A batch is about to be written: every site in it must end up holding its ``text``."""
        layout = self.layout
        if layout is None:
            return
        try:
            batch = parse_batch_record(obj, layout)
        except (RecordError, LayoutError):
            with self._lock:
                self.counts.bad_records += 1
            return
        problems = check_vector(batch, self.sym)
        users: dict[str, int] = {}
        for e in batch.entries:
            target = e.descriptor_target if e.opcode in (0xE8, 0xE9, 0xEB) else None
            att = self.census.attribute(e.site, target)
            if att.user == "unknown":  # names only when the tables did not decide (batches can be 36k long)
                att = census_mod.by_name(self.sym(e.site), self.sym(target) if target else None)
            users[att.user] = users.get(att.user, 0) + 1
        with self._lock:
            self.batches += 1
            top = max(users, key=lambda k: users[k]) if users else "unknown"
            self.counts.batch_users[top] = self.counts.batch_users.get(top, 0) + 1
            self.int3_before = _int3_before(obj)
            if problems:
                # a broken vector is the kernel's doing: no injection touches the order
                c = self.counts
                c.violations += 1
                c.batch_violations += 1
                c.false_flags += 1
                entry = {"t": obj.get("t"), "kind": "batch", "verdict": "violation",
                         "symbol": f"the text_poke vector ({len(batch.entries)} entries)",
                         "reason": "; ".join(problems), "nr_entries": len(batch.entries),
                         "sites": [f"{e.site:#x}" for e in batch.entries[:64]]}
                if len(self.violations) < 200:
                    self.violations.append(entry)
                self._trap_log.write(json.dumps(entry) + "\n")
                self._trap_log.flush()
                self.violation_seen.set()
            for e in batch.entries:
                st = self.sites.get(e.site)
                if st is None:
                    self.sites[e.site] = SiteState(e.written, self.sym(e.site) or "?", 0)
                else:
                    st.before = st.written if len(st.written) == len(e.written) else None
                    st.written, st.by = e.written, "batch"
                self.dirty_sites.add(e.site)

    #: a site is at most this long (JMP32/CALL): sites that may overlap a write start this far before it
    SITE_MAX = 5

    def _on_poke(self, obj: dict[str, Any]) -> None:
        """A plain ``text_poke()`` / ``text_poke_copy()`` / ``text_poke_set()`` outside an int3 batch
        (``POKELAB-POKE {"addr", "len", "data"}``, from the recorder's ``__text_poke`` hook):
        every known site it overlaps must now hold what it wrote there."""
        try:
            addr, length = int(obj["addr"]), int(obj["len"])
            data = bytes.fromhex(str(obj.get("data", "")))
        except (KeyError, TypeError, ValueError):
            with self._lock:
                self.counts.bad_records += 1
            return
        with self._lock:
            self.pokes += 1
            if length <= 64:
                near = [s for s in range(addr - self.SITE_MAX + 1, addr + length) if s in self.sites]
            else:
                near = [s for s, st in self.sites.items() if s < addr + length and s + len(st.written) > addr]
            for site in near:
                st = self.sites[site]
                new = bytearray(st.written)
                unknown = False
                for i in range(len(new)):
                    off = site + i - addr
                    if 0 <= off < length:
                        if off < len(data):
                            new[i] = data[off]
                        else:
                            unknown = True
                if unknown:
                    del self.sites[site]
                    self.dirty_sites.discard(site)
                    self.poke_unknown.append({"site": f"{site:#x}", "name": st.name, "reason":
                                              f"rewritten by a plain {length}-byte text_poke write at "
                                              f"{addr:#x}, longer than the {len(data)} bytes reported"})
                    continue
                if bytes(new) != st.written:
                    st.before, st.written = st.written, bytes(new)
                st.by = "poke"
                self.poked_sites += 1
                self.dirty_sites.add(site)

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

    def _on_trap(self, obj: dict[str, Any]) -> None:
        layout = self.layout
        if layout is None:
            return
        try:
            rec = parse_trap_record(obj, layout)
        except (RecordError, LayoutError) as exc:
            with self._lock:
                self.counts.bad_records += 1
            log.warning("malformed trap record: %s", exc)
            return
        if self._other_owners_int3(rec, obj):
            return
        j = judge(rec, layout, self.sym, self.sym.by_name.get("__static_call_return0"))
        entry = {"t": obj.get("t"), "cpu": obj.get("cpu"), "kind": j.kind, "verdict": j.verdict,
                 "reason": j.reason, "injected": obj.get("injected"), "lookup": obj.get("lookup")}
        if j.kind == "judged" and rec.entry is not None:
            e = rec.entry
            old = obj.get("entry_orig")
            entry.update({
                "site": f"{j.site:#x}" if j.site is not None else None,
                "symbol": self.sym(j.site) if j.site is not None else None,
                "opcode": f"{e.opcode:#04x}",
                "len": e.len,
                "new_bytes": decode.format_bytes(e.written),
                "new_insn": str(j.written) if j.written else None,
                "old_byte": f"{e.old:#04x}" if e.old is not None else None,
                "target": f"{j.expected_ip:#x}" if j.expected_ip is not None else None,
                "target_name": self.sym(j.expected_ip) if j.expected_ip is not None else None,
                "emulated_ip": f"{j.actual_ip:#x}" if j.actual_ip is not None else None,
                "emulated_name": self.sym(j.actual_ip) if j.actual_ip is not None else None,
                "pushed": f"{j.actual_push:#x}" if j.actual_push is not None else None,
                "regs_before": {"ip": f"{rec.pre.ip:#x}", "sp": f"{rec.pre.sp:#x}",
                                "flags": f"{rec.pre.flags:#x}"},
                "regs_after": {"ip": f"{rec.post.ip:#x}", "sp": f"{rec.post.sp:#x}",
                               "flags": f"{rec.post.flags:#x}"},
                "ret": obj.get("ret"),
            })
            if old:
                entry["entry_before_injection"] = old
            entry.update(self._attribute(entry).as_record())
        if "cost_ms" in obj:
            entry["cost_ms"] = obj["cost_ms"]
        with self._lock:
            c = self.counts
            c.seen += 1
            if "cost_ms" in obj:
                self.trap_costs_ms.append(float(obj["cost_ms"]))
            injected = bool(obj.get("injected"))
            if obj.get("injected_by") and j.verdict != "violation":
                # Another vCPU corrupted this entry during this trap's window, but the
                # handler read it before or after the corruption: it emulated clean data.
                injected = False
                entry["injected"], entry["overlapped_injection"] = None, obj["injected"]
            c.injected += injected
            if j.kind == "judged":
                if j.verdict == "skipped":
                    c.skipped += 1
                else:
                    c.judged += 1
                    op = str(entry.get("opcode", "?"))
                    c.opcodes[op] = c.opcodes.get(op, 0) + 1
                    user = str(entry.get("user", "unknown"))
                    c.users[user] = c.users.get(user, 0) + 1
                if j.verdict == "violation":
                    c.violations += 1
                    if injected:
                        c.injected_flagged += 1
                    else:
                        c.false_flags += 1
                    if len(self.violations) < 200:
                        self.violations.append(entry)
                    self.violation_seen.set()
                if j.site is not None and rec.entry is not None:
                    st = self.sites.get(j.site)
                    # the real text being written: the original entry if we corrupted it
                    written = rec.entry.written
                    if old:
                        written = parse_text_poke_loc(bytes.fromhex(old), layout).written
                    if st is None:
                        self.sites[j.site] = SiteState(written, entry.get("symbol") or "?", 1)
                    else:
                        st.written, st.traps = written, st.traps + 1
                    self.dirty_sites.add(j.site)
            self._trap_log.write(json.dumps(entry) + "\n")
            self._trap_log.flush()

    def _attribute(self, rec: dict[str, Any]) -> census_mod.Attribution:
        """The census's user for one trap-log record (its ``site``, ``target`` and their names)."""
        target = int(rec["target"], 16) if rec.get("target") else None
        return self.census.attribute(int(rec["site"], 16), target, rec.get("symbol"), rec.get("target_name"))

    def _other_owners_int3(self, rec: TrapRecord, obj: dict[str, Any]) -> bool:
        """A trap, with this CPU's refs == 0, at a site of the running batch that held an int3
        before the batch began (an armed kprobe being optimized): the int3 is its owner's and the
        batch has not taken its refs yet (6.16+ marks the batch from its entry).  Logged as not
        text_poke's; True if so."""
        site = (rec.pre.ip - 1) & 0xFFFFFFFFFFFFFFFF
        if rec.desc.refs != 0 or not rec.desc.in_batch or site not in self.int3_before:
            return False
        entry = {"t": obj.get("t"), "cpu": obj.get("cpu"), "kind": "not-text-poke", "verdict": "skipped",
                 "reason": f"refs == 0 at {self.sym(site) or hex(site)}, which held an int3 before this "
                           "batch began (another owner's, e.g. an armed kprobe): not the batch's trap yet"}
        with self._lock:
            self.counts.other += 1
            self._trap_log.write(json.dumps(entry) + "\n")
            self._trap_log.flush()
        return True

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

    #: at most this many sites without traps are read back per check (an unfiltered
    #: tracer switch patches ~36,000 sites); the ones left are counted as unchecked
    MAX_UNTRAPPED_READBACKS = 256

    def check_sites(self) -> list[TextCheck]:
        """Pause, read back every site patched since the last check, compare, resume.

        With the batch recorder off nothing is compared (a site may have been
        written again after its last trap, unseen): the sites count as unchecked.
        """
        with self._lock:
            if not self._batches_on:
                self.unchecked_sites += len(self.dirty_sites)
                self.dirty_sites.clear()
                return []
            todo = {s: (self.sites[s].written, self.sites[s].name, self.sites[s].traps)
                    for s in self.dirty_sites}
            self.dirty_sites.clear()
        trapped = sorted(s for s, v in todo.items() if v[2] > 0)
        quiet = sorted(s for s, v in todo.items() if v[2] == 0)
        chosen = trapped + quiet[:self.MAX_UNTRAPPED_READBACKS]
        checks: list[TextCheck] = []
        if not chosen:
            return checks
        freed: list[dict[str, str]] = []
        with self.paused():
            live = [TextRegion("trampoline", self.sym(o["trampoline"]) or f"{o['trampoline']:#x}",
                               o["trampoline"], o["trampoline"] + (o.get("trampoline_size") or 0x100))
                    for o in self.refresh_ops() if o.get("trampoline")]
            live = [replace(r, owner=r.owner.removesuffix("+0x0")) for r in live]
            self._trampolines.update((r.start, r) for r in live)
            core = self.core_text()
            flight = self._in_flight()
            in_flight: list[dict[str, str]] = []
            modules: list[TextRegion] | None = None
            for site in chosen:
                written, name, _ = todo[site]
                in_core = core[0] <= site < core[1]
                region = None
                if not in_core:
                    if modules is None:
                        modules = self.module_texts() or []
                        live += modules
                    region, name, why = self._locate(site, name, live)
                    if why is not None:
                        freed.append({"site": f"{site:#x}", "name": name, "reason": why})
                        continue
                try:
                    now = self.read_memory(site, len(written))
                except MiError as exc:
                    if in_core or region is not None:
                        raise  # the kernel's own text, or a live module's, must read
                    freed.append({"site": f"{site:#x}", "name": name, "reason":
                                  f"unreadable ({exc.title}), outside the kernel's text "
                                  f"[{core[0]:#x}, {core[1]:#x}) and in no loaded module or live "
                                  "trampoline: its text was freed"})
                    continue
                ok, reason = check_final_text(now, written)
                if not ok:
                    why = self._why_in_flight(site, now, flight)
                    if why is not None:
                        in_flight.append({"site": f"{site:#x}", "name": name, "reason": why,
                                          "bytes_read": now.hex()})
                        continue
                checks.append(TextCheck(site, name, ok, reason, now.hex()))
        for f in freed:
            log.info("not checked: %s %s: %s", f["site"], f["name"], f["reason"])
        for f in in_flight:
            log.info("not checked (in flight): %s %s: %s", f["site"], f["name"], f["reason"])
        with self._lock:
            self.text_checks.extend(checks)
            self.freed_sites.extend(freed)
            self.in_flight_sites.extend(in_flight)
            self.dirty_sites.update(int(f["site"], 16) for f in in_flight)  # read again next time
            self.unchecked_sites += len(quiet) - min(len(quiet), self.MAX_UNTRAPPED_READBACKS)
        return checks

    def _why_in_flight(self, site: int, now: bytes,
                       flight: tuple[dict[int, TextPokeLoc], list[tuple[int, int]]]) -> str | None:
        """Why a site that does not hold its last write is not (yet) a mismatch, or None if it is."""
        live, pending = flight
        with self._lock:
            st = self.sites.get(site)
        if st is None:
            return None
        e = live.get(site)
        if e is not None:
            ok, why = check_in_flight(now, e.written, st.before, e.old)
            return f"a batch of {len(live)} site(s) is in flight: {why}" if ok else None
        if any(a < site + len(st.written) and site < a + n for a, n in pending):
            ok, why = check_poke_in_flight(now, st.written, st.before)
            return why if ok else None
        return None

    def _locate(self, site: int, name: str,
                live: list[TextRegion]) -> tuple[TextRegion | None, str, str | None]:
        """For a site outside the core text: (the live region holding it, its name, why its text is
        gone or None).  Remembers the region for the next check, when it may be gone."""
        was = self._site_region.get(site)
        why = freed_reason(site, live, was, list(self._trampolines.values()), self._module_fields is not None)
        if why is not None:
            self._site_region.pop(site, None)
            return None, region_name(name, site, was), why
        region = next((r for r in live if site in r), None)
        if region is not None:
            self._site_region[site] = region
            name = region_name(name, site, region)
            with self._lock:
                if site in self.sites:
                    self.sites[site].name = name
        return region, name, None

    def core_text(self) -> tuple[int, int]:
        """[_stext, _etext): the kernel image's own text, which never goes away (System.map, else GDB)."""
        if self._core_text is None:
            ends = []
            for name in ("_stext", "_etext"):
                addr = self.sym.by_name.get(name)
                if addr is None:
                    try:
                        addr = int(self.evaluate(f"(unsigned long)&{name}").split()[0], 0)
                    except (MiError, ValueError, IndexError):
                        raise InfraError(f"cannot find {name} in the vmlinux") from None
                ends.append(addr)
            self._core_text = (ends[0], ends[1])
        return self._core_text

    def module_texts(self) -> list[TextRegion] | None:
        """The text of every loaded module, walked from the kernel's ``modules`` list
        (``struct module``'s ``list``; kernel/module/main.c), guest stopped.

        None if the walk cannot be made (no ``modules`` symbol, an unknown layout, a
        list longer than MAX_MODULES): then no module text is known to be gone.
        """
        def num(expr: str) -> int:
            return int(self.evaluate(expr).split()[0], 0)

        try:
            head = num("(unsigned long)&modules")
            link = num("(unsigned long)&((struct module *)0)->list")
            if self._module_fields is None:
                for layout in MODULE_TEXT_FIELDS:
                    try:  # an offset, no guest read: fails only if the field does not exist
                        num(f"(unsigned long)&((struct module *)0)->{layout[0][1]}")
                    except MiError:
                        continue
                    self._module_fields = layout
                    break
            fields = self._module_fields
            if fields is None:
                return None
            out: list[TextRegion] = []
            node = num("(unsigned long)modules.next")
            for _ in range(MAX_MODULES + 1):
                if node == head:
                    return out
                mod = f"((struct module *){node - link:#x})"
                m = _GDB_STRING.match(self.evaluate(f"{mod}->name"))
                name = m.group(1) if m else "?"
                for kind, base_f, size_f in fields:
                    base, size = num(f"(unsigned long){mod}->{base_f}"), num(f"{mod}->{size_f}")
                    if base and size:
                        out.append(TextRegion(kind, name, base, base + size))
                node = num(f"(unsigned long){mod}->list.next")
            log.warning("the module list is longer than %d entries: not walked", MAX_MODULES)
            return None
        except (MiError, ValueError, IndexError) as exc:
            log.warning("cannot walk the module list: %s", exc)
            return None

    def note_checks(self, checks: list[TextCheck]) -> None:
        """Read-backs a scenario made itself (e.g. every site of a static call) count as text checks."""
        with self._lock:
            self.text_checks.extend(checks)

    def recorder_stats(self) -> dict[str, Any]:
        assert self._mi is not None
        self._mi.console("python pokelab_stats()")
        with self._lock:
            return dict(self.stats)

    def stop_rate(self, window: float = 30.0, now: float | None = None) -> float:
        """Guest stops per second the recorder reported over the last ``window`` seconds (or since
        attach, if shorter): each trap is two stops (entry, return), each batch one."""
        now = time.monotonic() if now is None else now
        start = max(self._t0, now - window)
        with self._lock:
            n = sum(k for t, k in self._stop_times if start <= t <= now)
        return n / max(now - start, 1e-3)

    def judged_count(self) -> int:
        with self._lock:
            return self.counts.judged

    # -- the end ----------------------------------------------------------------------
    def finish(self) -> None:
        """Rewrite the trap log with the trampoline names learned meanwhile."""
        with self._lock:
            self._trap_log.close()
        lines = self.trap_log_path.read_text().splitlines()
        out = []
        for line in lines:
            rec = json.loads(line)
            for key, name_key in (("target", "target_name"), ("emulated_ip", "emulated_name")):
                if rec.get(key) and not rec.get(name_key):
                    rec[name_key] = self.sym(int(rec[key], 16))
            if rec.get("site"):  # regions learned meanwhile (ops trampolines) may name the user
                rec.update(self._attribute(rec).as_record())
            out.append(json.dumps(rec))
        with self._lock:
            self.counts.users = census_mod.count_users(json.loads(line) for line in out)
        self.trap_log_path.write_text("\n".join(out) + ("\n" if out else ""))

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
                "bad_records": c.bad_records,
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
