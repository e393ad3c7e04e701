"""The trap ledger: what the in-GDB recorder reports, judged and kept.

Every ``POKELAB-*`` line the recorder (``data/pokelab_gdb.py``) writes comes here
(live from the record pipe's reader or the MI reader thread, or replayed from a transcript):
a trap is parsed, judged (``judge.judge``), attributed to its text_poke user
and appended to ``traps.jsonl``; a batch or a plain write updates what each
patched site must hold (``SiteState``) for the read-back (``readback.py``).
No GDB here: the Probe (``probe.py``) feeds it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import census as census_mod
from ..core import decode
from ..core.judge import check_vector, judge
from ..core.trapdata import (
    Layout,
    LayoutError,
    RecordError,
    TrapRecord,
    int3_before_sites,
    layout_from_setup,
    parse_batch_record,
    parse_text_poke_loc,
    parse_trap_record,
)
from .symbols import KernelSymbolizer

log = logging.getLogger(__name__)
#: a trap record's addresses and the fields that name them
NAMED_FIELDS = (("site", "symbol"), ("target", "target_name"), ("emulated_ip", "emulated_name"))


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


class TrapLedger:
    """The records of one probe session: counts, the sites and what they must hold, the trap log.

    Thread-safe: the MI reader thread ingests while the main thread reads (``_lock``).
    """

    def __init__(self, artifacts: Path, symbolizer: KernelSymbolizer,
                 census: census_mod.Census | None = None) -> None:
        self.artifacts = artifacts
        self.sym = symbolizer
        #: who wrote each site (empty tables: every site is "unknown" unless named)
        self.census = census or census_mod.Census(census_mod.KernelTables())
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
        self.trap_costs_ms: list[float] = []
        self.violations: list[dict[str, Any]] = []
        self.batches = 0
        #: patched sites not read back because the budget went blind before the check
        self.blind_unchecked = 0
        #: plain text_poke() writes (outside an int3 batch) seen, and the sites they rewrote
        self.pokes = 0
        self.poked_sites = 0
        #: (site, target) pairs of batches whose user was unknown when seen (``_on_batch``)
        self._unknown_batches: list[list[tuple[int, int | None]]] = []
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
        self._t0 = time.monotonic()

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
                self._stop_times.append((time.monotonic(), self._stops_of(tag)))
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
        pairs = [(e.site, e.descriptor_target if e.opcode in (0xE8, 0xE9, 0xEB) else None)
                 for e in batch.entries]
        top = self._batch_user(pairs)
        with self._lock:
            self.batches += 1
            self.counts.batch_users[top] = self.counts.batch_users.get(top, 0) + 1
            if top == "unknown" and len(self._unknown_batches) < self.MAX_UNKNOWN_BATCHES:
                self._unknown_batches.append(pairs[:self.SITE_SAMPLE])
            self.int3_before = int3_before_sites(obj)
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
    #: batches of no known user kept (their first SITE_SAMPLE entries) to be attributed again at the end
    MAX_UNKNOWN_BATCHES, SITE_SAMPLE = 10_000, 64

    def _batch_user(self, pairs: list[tuple[int, int | None]]) -> str:
        """The user of most of a batch's (site, target being written) pairs (census, then names)."""
        users: Counter[str] = Counter()
        for site, target in pairs:
            att = self.census.attribute(site, target)
            if att.user == "unknown":  # names only when the tables did not decide (batches can be 36k long)
                att = census_mod.by_name(self.sym(site), self.sym(target) if target else None)
            users[att.user] += 1
        return users.most_common(1)[0][0] if users else "unknown"

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

    def _stops_of(self, tag: str) -> int:
        """The guest stops behind one record: a trap two (entry, return), a batch two where the
        recorder also stops at its returns (``batch_exits``, ``poke_batch_exits``), else one."""
        info = self.setup_info or {}
        batch_end = tag == "POKELAB-BATCH" and (info.get("batch_exits") or info.get("poke_batch_exits"))
        return 2 if tag == "POKELAB-TRAP" or batch_end else 1

    def stop_rate(self, window: float = 30.0, now: float | None = None) -> float:
        """Guest stops per second the recorder reported over the last ``window`` seconds (or since
        attach, if shorter), counted by :meth:`_stops_of`."""
        now = time.monotonic() if now is None else now
        start = max(self._t0, now - window)
        with self._lock:
            n = sum(k for t, k in self._stop_times if start <= t <= now)
        return n / max(now - start, 1e-3)

    def judged_count(self) -> int:
        with self._lock:
            return self.counts.judged

    def attributed_records(self) -> list[dict[str, Any]]:
        """The trap log's records so far, named and attributed by the regions known now (BPF text...)."""
        with self._lock:
            if not self._trap_log.closed:
                self._trap_log.flush()
        return [self._renamed(rec) for rec in read_trap_log(self.trap_log_path)]

    def _renamed(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A trap record (in place) with the names and census user the regions known now give it."""
        for key, name_key in NAMED_FIELDS:
            if rec.get(key) and not rec.get(name_key):
                rec[name_key] = self.sym(int(rec[key], 16))
        if rec.get("site"):
            rec.update(self._attribute(rec).as_record())
        return rec

    # -- the end ----------------------------------------------------------------------
    def finish(self) -> None:
        """Rewrite the trap log with the region names learned meanwhile (:meth:`attributed_records`)."""
        with self._lock:
            self._trap_log.close()
        out = self.attributed_records()
        again = Counter(u for u in map(self._batch_user, self._unknown_batches) if u != "unknown")
        with self._lock:
            self.counts.users = census_mod.count_users(out)
            bu = Counter(self.counts.batch_users) + again
            bu["unknown"] -= again.total()
            self.counts.batch_users = census_mod.order_users(bu)
            for v in self.violations:  # the examples shown, named as the trap log now is
                if v.get("kind") != "batch":
                    self._renamed(v)
        self.trap_log_path.write_text("".join(json.dumps(rec) + "\n" for rec in out))

