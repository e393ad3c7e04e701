"""Reading back the text at patched sites while the guest is paused.

After a batch every site it patched must hold what the descriptor said it
writes (``SiteState.written``, kept by the ledger).  Some sites cannot be read
or compared: their text was freed (an unloaded module, a module's init text,
an unregistered ftrace_ops's trampoline), or a batch or a plain write is still
in flight.  ``SiteReadback`` is the logic; the GDB primitives it needs
(pause, read memory, evaluate, the recorder's ops and in-flight reports) are
the Probe's (``probe.py``).
"""

from __future__ import annotations

import logging
import re
from abc import abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core import census as census_mod
from ..core.errors import InfraError
from ..core.judge import check_final_text, check_in_flight, check_poke_in_flight
from ..core.trapdata import Layout, LayoutError, RecordError, TextPokeLoc, parse_batch_record
from .ledger import TrapLedger
from .mi import MiError
from .symbols import KernelSymbolizer

log = logging.getLogger(__name__)



@dataclass
class TextCheck:
    site: int
    name: str
    ok: bool
    reason: str
    bytes_read: str


@dataclass(frozen=True)
class TextRegion:
    """Kernel text that can go away: a module's text (core or init), an ftrace trampoline, or BPF
    JITed text (a program's image, a BPF trampoline or dispatcher: a ``struct bpf_ksym``)."""

    #: "module", "module-init", "trampoline" or "bpf"
    kind: str
    #: who owns it, for reasons: the module's name, the trampoline's name (ops(...).trampoline),
    #: the BPF ksym's name (bpf_prog_<tag>_<name>, bpf_trampoline_<key>, bpf_dispatcher_<name>)
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
#: the most entries walked in the kernel's ``bpf_kallsyms`` list (likewise)
MAX_BPF_KSYMS = 4096

_GDB_STRING = re.compile(r'^"((?:[^"\\]|\\.)*)"')


def region_name(name: str, site: int, region: TextRegion | None) -> str:
    """A site's name: the symbolizer's, else its offset in a module's text (``mod.text+0x50``) or in
    BPF text (``bpf_prog_<tag>_<name>+0x2d``).  Pure."""
    if name not in ("", "?") or region is None or region.kind not in ("module", "module-init", "bpf"):
        return name
    if region.kind == "bpf":
        return f"{region.owner}+{site - region.start:#x}"
    part = "init.text" if region.kind == "module-init" else "text"
    return f"{region.owner}.{part}+{site - region.start:#x}"


_GONE = {"trampoline": "was freed (its ftrace_ops unregistered)",
         "module": "was unloaded: its text was freed",
         "module-init": "was freed when the module's init ended",
         "bpf": "was freed (its BPF program, trampoline or dispatcher released)"}


def freed_reason(site: int, live: list[TextRegion], was: TextRegion | None,
                 seen: list[TextRegion], modules_known: bool, bpf_known: bool = False) -> str | None:
    """Why the text at ``site`` is gone (not to be read back), or None if it may be read.  Pure.

    ``live``: the module texts, trampolines and BPF texts that exist now; ``was``: the region
    the site lay in when it was last seen live; ``seen``: every trampoline and BPF text seen in
    this run; ``modules_known`` / ``bpf_known``: ``live`` holds the module list / the
    ``bpf_kallsyms`` list (that walk worked).  A trampoline is known gone once it is not
    registered; a module or BPF text only when its list was walked.
    """
    if any(site in r for r in live):
        return None
    known = {"trampoline": True, "module": modules_known, "module-init": modules_known, "bpf": bpf_known}
    if was is not None and known.get(was.kind, False):
        return f"{was} " + _GONE.get(was.kind, "is gone")
    for r in seen:
        if site in r and r.kind in ("trampoline", "bpf") and known[r.kind]:
            return f"{r} " + _GONE[r.kind]
    return None




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




class SiteReadback(TrapLedger):
    """The ledger plus the read-back of patched sites (``check_sites``); GDB access is abstract."""

    def __init__(self, artifacts: Path, symbolizer: KernelSymbolizer,
                 census: census_mod.Census | None = None) -> None:
        super().__init__(artifacts, symbolizer, census)
        self.text_checks: list[TextCheck] = []
        self.unchecked_sites = 0
        #: sites not read back because their text is gone: {"site", "name", "reason"}
        self.freed_sites: list[dict[str, str]] = []
        #: the region each site outside the core text lay in when last seen live
        self._site_region: dict[int, TextRegion] = {}
        #: every trampoline and BPF text seen in this run, by start address
        self._seen: dict[int, TextRegion] = {}
        #: the bpf_kallsyms list was walked at the current check (``bpf_texts``)
        self._bpf_known = False
        self._core_text: tuple[int, int] | None = None
        self._module_fields: tuple[tuple[str, str, str], ...] | None = None
        #: sites read while a batch or a plain write was in flight: {"site", "name", "reason"}
        #: (not checked then; read again at the next check)
        self.in_flight_sites: list[dict[str, str]] = []

    # -- what the read-back needs from GDB (the Probe's) -----------------------------
    @abstractmethod
    def paused(self) -> AbstractContextManager[None]:
        """The guest stopped for the ``with`` block, running again after it."""

    @abstractmethod
    def read_memory(self, addr: int, length: int) -> bytes:
        """``length`` bytes of guest memory at ``addr`` (MiError if unreadable)."""

    @abstractmethod
    def evaluate(self, expr: str) -> str:
        """GDB's value of a C expression (MiError if it has none)."""

    @abstractmethod
    def refresh_ops(self) -> list[dict[str, Any]]:
        """The registered ftrace_ops with their trampolines (guest stopped)."""

    @abstractmethod
    def _in_flight(self) -> tuple[dict[int, TextPokeLoc], list[tuple[int, int]]]:
        """The live batch's entries by site, and plain writes entered but not returned (guest stopped)."""

    # -- checks while paused ------------------------------------------------------
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
            self._seen.update((r.start, r) for r in live)
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
                        bpf = self.bpf_texts()
                        self._bpf_known = bpf is not None
                        self._seen.update((r.start, r) for r in bpf or [])
                        live += modules + (bpf or [])
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
        why = freed_reason(site, live, was, list(self._seen.values()), self._module_fields is not None,
                           self._bpf_known)
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

    def bpf_texts(self) -> list[TextRegion] | None:
        """The JITed text the kernel lists in ``bpf_kallsyms`` (kernel/bpf/core.c: every BPF
        program's image while ``net.core.bpf_jit_kallsyms`` is 1, BPF trampolines and
        dispatchers), guest stopped: one ``TextRegion("bpf", name, start, end)`` per
        ``struct bpf_ksym {unsigned long start, end; char name[]; struct list_head lnode}``
        (addresses in guest virtual memory, ``end`` exclusive).  Each is also named in the
        symbolizer and made a census region of user ``bpf``.

        None if the list cannot be walked (no ``bpf_kallsyms`` in the debug info, a list
        longer than MAX_BPF_KSYMS): then no BPF text is known to be gone.
        """
        def num(expr: str) -> int:
            return int(self.evaluate(expr).split()[0], 0)

        try:
            head = num("(unsigned long)&bpf_kallsyms")
            link = num("(unsigned long)&((struct bpf_ksym *)0)->lnode")
            out: list[TextRegion] = []
            node = num("(unsigned long)bpf_kallsyms.next")
            for _ in range(MAX_BPF_KSYMS + 1):
                if node == head:
                    break
                ksym = f"((struct bpf_ksym *){node - link:#x})"
                m = _GDB_STRING.match(self.evaluate(f"{ksym}->name"))
                start, end = num(f"{ksym}->start"), num(f"{ksym}->end")
                if start and end > start:
                    out.append(TextRegion("bpf", (m.group(1) if m else "") or f"bpf_ksym@{start:#x}",
                                          start, end))
                node = num(f"(unsigned long){ksym}->lnode.next")
            else:
                log.warning("the bpf_kallsyms list is longer than %d entries: not walked", MAX_BPF_KSYMS)
                return None
        except (MiError, ValueError, IndexError) as exc:
            log.warning("cannot walk the bpf_kallsyms list: %s", exc)
            return None
        for r in out:
            self.sym.add_region(r.owner, r.start, r.end - r.start)
            self.census.add_region(r.start, r.end - r.start, "bpf", r.owner)
        return out

    def note_checks(self, checks: list[TextCheck]) -> None:
        """Read-backs a scenario made itself (e.g. every site of a static call) count as text checks."""
        with self._lock:
            self.text_checks.extend(checks)

