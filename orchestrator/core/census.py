"""The census: which text_poke user wrote a site (``ftrace``, ``static_call``, ``jump_label``, ...).

Pure core.  The kernel says who owns a patchable site in tables it builds at
link time; we read them once per build-id from the debug vmlinux
(``census_tables.py``, the thin shell) and decide by membership, not by names:

``__start_mcount_loc .. __stop_mcount_loc`` (in ``.init.data``, freed after boot,
so read from the file): ``unsigned long`` absolute addresses, one per fentry
site (``include/asm-generic/vmlinux.lds.h`` ``MCOUNT_REC()``; sorted at build
time by ``scripts/sorttable.c`` or at boot by ``ftrace_process_locs()``).
Owner: ``ftrace`` (``ftrace_replace_code()`` / ``ftrace_modify_all_code()``).

``__start___jump_table .. __stop___jump_table`` (x86_64,
``CONFIG_HAVE_ARCH_JUMP_LABEL_RELATIVE``), ``include/linux/jump_label.h``::

    struct jump_entry {          /* 16 bytes */
        s32  code;               /* site   = &entry->code   + code   */
        s32  target;             /* target = &entry->target + target */
        long key;                /* key    = &entry->key + (key & ~3); bit 0 branch, bit 1 init */
    };

(``arch/x86/include/asm/jump_label.h`` emits ``.long 1b - ., %l[l_yes] - .;
_ASM_PTR %c0 + %c1 - .``).  Owner: ``jump_label`` (``arch_jump_label_transform_queue``).

``__start_static_call_sites .. __stop_static_call_sites``,
``include/linux/static_call_types.h``::

    struct static_call_site {    /* 8 bytes */
        s32 addr;                /* site = &site->addr + addr */
        s32 key;                 /* key  = (&site->key + key) & ~STATIC_CALL_SITE_FLAGS */
    };                           /* flags: STATIC_CALL_SITE_TAIL 1, STATIC_CALL_SITE_INIT 2 */

made by objtool for every call to a ``__SCT__*`` trampoline, plus the
trampolines themselves (``__SCT__<name>``, 8 bytes each, in
``.static_call.text`` = ``__static_call_text_start .. __static_call_text_end``).
Owner: ``static_call`` (``arch_static_call_transform()`` in
``arch/x86/kernel/static_call.c``: CALL / NOP / JMP / RET and, for
``__static_call_return0``, ``xor5rax`` written while a CALL is emulated).

``ftrace_caller .. ftrace_caller_end`` and ``ftrace_regs_caller ..
ftrace_regs_caller_end`` (``arch/x86/kernel/ftrace_64.S``): ``ftrace_call`` and
friends, patched by ``ftrace_update_ftrace_func()``; owner ``ftrace``.

Dynamic text has no table in the vmlinux: the probe adds live regions
(:meth:`Census.add_region`), e.g. each ftrace_ops trampoline with the user its
``ops->func`` names (:data:`OPS_FUNC_USERS`).  An fentry site whose new call
or jump lands in such a region is attributed to that region's user (a
livepatch's ops trampoline makes the site ``livepatch``).  Module text (its
own tables are not read) falls back to names, marked ``how="name"``.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

USERS = ("ftrace", "static_call", "jump_label", "kprobe", "livepatch", "bpf", "unknown")

#: ``ftrace_ops.func`` -> the user its trampoline works for (the default is ``ftrace``)
OPS_FUNC_USERS = {
    "klp_ftrace_handler": "livepatch",
    "kprobe_ftrace_handler": "kprobe",
}

#: text ranges inside the vmlinux that ftrace rewrites: (start symbol, end symbol)
FTRACE_TEXT = (("ftrace_caller", "ftrace_caller_end"), ("ftrace_regs_caller", "ftrace_regs_caller_end"))
SCT_PREFIX = "__SCT__"
SCK_PREFIX = "__SCK__"
STATIC_CALL_TEXT = ("__static_call_text_start", "__static_call_text_end")

#: name fragments for the fallback (module and dynamic text the tables do not cover)
_NAME_HINTS = (
    ("klp", "livepatch"),
    ("bpf_trampoline", "bpf"), ("bpf_prog", "bpf"), ("bpf_dispatcher", "bpf"),
    ("optinsn", "kprobe"), ("kprobe", "kprobe"),
    (SCT_PREFIX, "static_call"),
    (".trampoline", "ftrace"), ("ftrace_", "ftrace"),
)  # fmt: skip

U64 = (1 << 64) - 1


class TableError(ValueError):
    """A table blob is not a whole number of entries (or its start address is missing)."""


@dataclass(frozen=True)
class Attribution:
    """Who wrote a site: ``user`` (one of :data:`USERS`), ``how`` we know, ``key`` if named.

    ``how`` is the table or region that decided (``mcount_loc``, ``jump_table``,
    ``static_call_sites``, ``static_call_tramp``, ``ftrace_text``,
    ``region:<name>``), or ``name`` for the name fallback, or ``none``.
    ``key`` names the static call (``cond_resched``), the static key's symbol,
    or the region.
    """

    user: str
    how: str
    key: str | None = None

    def as_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"user": self.user, "user_how": self.how}
        if self.key:
            rec["user_key"] = self.key
        return rec


UNKNOWN = Attribution("unknown", "none")


# --------------------------------------------------------------------------- table parsers


def parse_mcount_loc(blob: bytes) -> list[int]:
    """``__mcount_loc`` bytes -> fentry site addresses (u64 little-endian; zeros dropped)."""
    if len(blob) % 8:
        raise TableError(f"__mcount_loc is {len(blob)} bytes: not a multiple of 8")
    return [a for (a,) in struct.iter_unpack("<Q", blob) if a]


def parse_jump_table(blob: bytes, start: int) -> list[tuple[int, int, int]]:
    """``__jump_table`` bytes at address ``start`` -> (site, target, key) per ``struct jump_entry``.

    ``key`` has its two flag bits cleared (``jump_entry_key()``).
    """
    if len(blob) % 16:
        raise TableError(f"__jump_table is {len(blob)} bytes: not a multiple of 16")
    out = []
    for i, (code, target, key) in enumerate(struct.iter_unpack("<iiq", blob)):
        at = start + 16 * i
        out.append(((at + code) & U64, (at + 4 + target) & U64, (at + 8 + (key & ~3)) & U64))
    return out


def parse_static_call_sites(blob: bytes, start: int) -> list[tuple[int, int, bool]]:
    """``.static_call_sites`` bytes at ``start`` -> (site, key, tail) per ``struct static_call_site``."""
    if len(blob) % 8:
        raise TableError(f".static_call_sites is {len(blob)} bytes: not a multiple of 8")
    out = []
    for i, (addr, key) in enumerate(struct.iter_unpack("<ii", blob)):
        at = start + 8 * i
        out.append(((at + addr) & U64, (at + 4 + key) & U64 & ~3, bool(key & 1)))
    return out


# --------------------------------------------------------------------------- the tables


@dataclass(frozen=True)
class KernelTables:
    """What one vmlinux says about its patchable sites (JSON-serializable via :meth:`to_json`).

    ``mcount``: sorted fentry sites; ``jump``: site -> static key address;
    ``static_call``: site -> static call key address; ``tramps``: ``__SCT__``
    trampoline address -> static call name; ``keys``: key address -> name
    (``__SCK__x`` -> ``x``; a static key's symbol, ``sym+off`` inside a struct);
    ``ftrace_text``: (start, end, name) ranges ftrace rewrites;
    ``static_call_text``: the ``.static_call.text`` range (or None);
    ``init``: ``__init_begin .. __init_end``: freed after boot (poisoned with
    int3), so sites there are never patched again: the kernel flags them
    ``STATIC_CALL_SITE_INIT`` at boot (``init_section_contains()`` in
    ``kernel/static_call_inline.c``) and skips them.
    """

    mcount: tuple[int, ...] = ()
    jump: Mapping[int, int] = field(default_factory=dict)
    static_call: Mapping[int, int] = field(default_factory=dict)
    tramps: Mapping[int, str] = field(default_factory=dict)
    keys: Mapping[int, str] = field(default_factory=dict)
    ftrace_text: tuple[tuple[int, int, str], ...] = ()
    static_call_text: tuple[int, int] | None = None
    init: tuple[int, int] | None = None

    def is_init(self, addr: int) -> bool:
        return self.init is not None and self.init[0] <= addr < self.init[1]

    def to_json(self) -> dict[str, Any]:
        return {"mcount": list(self.mcount),
                "jump": [[s, k] for s, k in sorted(self.jump.items())],
                "static_call": [[s, k] for s, k in sorted(self.static_call.items())],
                "tramps": [[a, n] for a, n in sorted(self.tramps.items())],
                "keys": [[a, n] for a, n in sorted(self.keys.items())],
                "ftrace_text": [list(r) for r in self.ftrace_text],
                "static_call_text": list(self.static_call_text) if self.static_call_text else None,
                "init": list(self.init) if self.init else None}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> KernelTables:
        """The inverse of :meth:`to_json` (TableError if a field is malformed)."""
        try:
            sct, init = obj.get("static_call_text"), obj.get("init")
            return cls(mcount=tuple(sorted(int(a) for a in obj.get("mcount", []))),
                       jump={int(s): int(k) for s, k in obj.get("jump", [])},
                       static_call={int(s): int(k) for s, k in obj.get("static_call", [])},
                       tramps={int(a): str(n) for a, n in obj.get("tramps", [])},
                       keys={int(a): str(n) for a, n in obj.get("keys", [])},
                       ftrace_text=tuple((int(a), int(b), str(n)) for a, b, n in obj.get("ftrace_text", [])),
                       static_call_text=(int(sct[0]), int(sct[1])) if sct else None,
                       init=(int(init[0]), int(init[1])) if init else None)
        except (TypeError, ValueError) as exc:
            raise TableError(f"bad census tables: {exc}") from None

    def counts(self) -> dict[str, int]:
        return {"mcount_loc": len(self.mcount), "jump_table": len(self.jump),
                "static_call_sites": len(self.static_call), "static_call_tramps": len(self.tramps)}


def build_tables(symbols: Iterable[tuple[int, int, str]], read: Any) -> KernelTables:
    """Tables from the vmlinux's symbols (``(addr, size, name)``, text and data) and ``read(addr, n)``.

    ``read`` returns the file's bytes at a link-time address (KASLR is off);
    a table whose start/stop symbols are missing is left empty (that kernel
    has no such user built in).
    """
    rows = list(symbols)
    by_name: dict[str, int] = {}
    for addr, _size, name in rows:
        by_name.setdefault(name, addr)

    def span(lo: str, hi: str) -> tuple[int, int] | None:
        a, b = by_name.get(lo), by_name.get(hi)
        return (a, b) if a is not None and b is not None and b >= a else None

    mcount: list[int] = []
    if (r := span("__start_mcount_loc", "__stop_mcount_loc")):
        mcount = parse_mcount_loc(read(r[0], r[1] - r[0]))
    jump: dict[int, int] = {}
    if (r := span("__start___jump_table", "__stop___jump_table")):
        jump = {s: k for s, _t, k in parse_jump_table(read(r[0], r[1] - r[0]), r[0])}
    static_call: dict[int, int] = {}
    if (r := span("__start_static_call_sites", "__stop_static_call_sites")):
        static_call = {s: k for s, k, _tail in parse_static_call_sites(read(r[0], r[1] - r[0]), r[0])}
    tramps = {a: n[len(SCT_PREFIX):] for a, _s, n in rows if n.startswith(SCT_PREFIX)}
    keys = {a: n[len(SCK_PREFIX):] for a, _s, n in rows if n.startswith(SCK_PREFIX)}
    keys.update(name_addresses(rows, set(jump.values()) - set(keys)))
    ftrace_text = tuple((a, b, lo) for lo, hi in FTRACE_TEXT if (r := span(lo, hi)) for a, b in [r])
    return KernelTables(tuple(sorted(set(mcount))), jump, static_call, tramps, keys, ftrace_text,
                        span(*STATIC_CALL_TEXT), span("__init_begin", "__init_end"))


def name_addresses(symbols: Iterable[tuple[int, int, str]], addrs: Iterable[int]) -> dict[int, str]:
    """``sym`` or ``sym+0xoff`` (within 4 KiB) for each address, e.g. a static key inside a
    ``struct tracepoint`` (``__tracepoint_sched_switch+0x8``).  Export-table symbols are skipped."""
    data = sorted((a, n) for a, _s, n in symbols if not n.startswith(("__ksymtab", "__kstrtab", "__crc")))
    starts = [a for a, _n in data]
    out: dict[int, str] = {}
    for k in addrs:
        i = bisect.bisect_right(starts, k) - 1
        if i >= 0 and k - starts[i] < 0x1000:
            a, n = data[i]
            out[k] = n if a == k else f"{n}+{k - a:#x}"
    return out


# --------------------------------------------------------------------------- the census


@dataclass(frozen=True)
class Region:
    start: int
    size: int
    user: str
    name: str

    def __contains__(self, addr: int) -> bool:
        return self.start <= addr < self.start + self.size


class Census:
    """Attributes a site (and the target being written there) to a text_poke user.

    Thread-safe for one writer: regions are replaced as a whole tuple.
    """

    def __init__(self, tables: KernelTables) -> None:
        self.tables = tables
        self._mcount = set(tables.mcount)
        self._regions: tuple[Region, ...] = ()

    def add_region(self, start: int, size: int, user: str, name: str) -> None:
        """A live text region (an ftrace_ops trampoline, a kprobe insn page, BPF JITed text, ...) owned
        by ``user``.  Where it overlaps regions added before (text freed and allocated again), it wins;
        elsewhere they still name what was there (traps seen before are attributed again later)."""
        if user not in USERS:
            raise ValueError(f"unknown text_poke user {user!r}")
        kept = [r for r in self._regions if r.start != start]
        self._regions = (*kept, Region(start, size, user, name))

    def region_of(self, addr: int) -> Region | None:
        """The newest region holding ``addr``, or None."""
        for r in reversed(self._regions):
            if addr in r:
                return r
        return None

    def site_user(self, site: int) -> Attribution:
        """The user by the site alone: the vmlinux tables first, then live regions."""
        t = self.tables
        if site in t.static_call:
            return Attribution("static_call", "static_call_sites", t.keys.get(t.static_call[site]))
        if site in t.tramps:
            return Attribution("static_call", "static_call_tramp", t.tramps[site])
        if t.static_call_text and t.static_call_text[0] <= site < t.static_call_text[1]:
            return Attribution("static_call", "static_call_text")
        if site in t.jump:
            return Attribution("jump_label", "jump_table", t.keys.get(t.jump[site]))
        if site in self._mcount:
            return Attribution("ftrace", "mcount_loc")
        for a, b, name in t.ftrace_text:
            if a <= site < b:
                return Attribution("ftrace", "ftrace_text", name)
        r = self.region_of(site)
        if r is not None:
            return Attribution(r.user, f"region:{r.name}", r.name)
        return UNKNOWN

    def refine(self, base: Attribution, target: int | None) -> Attribution:
        """An fentry site (``mcount_loc``) written to call/jump into a region takes the region's user."""
        if base.how != "mcount_loc" or target is None:
            return base
        r = self.region_of(target)
        if r is not None and r.user != "ftrace":
            return Attribution(r.user, f"mcount_loc+region:{r.name}", r.name)
        return base

    def attribute(self, site: int, target: int | None = None, site_name: str | None = None,
                  target_name: str | None = None) -> Attribution:
        """Tables, then regions, then (marked ``how="name"``) the names of site and target."""
        a = self.refine(self.site_user(site), target)
        if a.user != "unknown":
            return a
        return by_name(site_name, target_name)


def by_name(site_name: str | None, target_name: str | None) -> Attribution:
    """The name fallback: a hint in the site's or target's symbol name, else ``unknown``."""
    for name in (site_name, target_name):
        if not name:
            continue
        for frag, user in _NAME_HINTS:
            if frag in name:
                return Attribution(user, "name", name)
    return UNKNOWN


#: what a static call's trampoline or inline site can hold (``__static_call_transform()``):
#: ``func`` = ``call/jmp func``; ``ret0`` = ``jmp __static_call_return0`` (trampoline, tail
#: site) or ``xor5rax`` (call site); ``null`` = ``ret; int3 x4`` or ``jmp __x86_return_thunk``
#: (trampoline, tail site) or the 5-byte NOP (call site)
STATIC_CALL_FORMS = ("func", "ret0", "null")
NOP5 = bytes.fromhex("0f 1f 44 00 00")
XOR5RAX = (bytes.fromhex("2e 2e 2e 31 c0"), bytes.fromhex("66 66 48 31 c0"))


def static_call_form(text: bytes, addr: int, return0: int | None,
                     return_thunk: int | None) -> tuple[str, int | None]:
    """(form, call/jump target) of the 5 bytes at a static call trampoline or site (``other``: neither)."""
    text = bytes(text[:5])
    if text[:1] == b"\xc3":
        return "null", None
    if text == NOP5:
        return "null", None
    if text in XOR5RAX:
        return "ret0", return0
    if len(text) == 5 and text[0] in (0xE8, 0xE9):
        target = (addr + 5 + int.from_bytes(text[1:5], "little", signed=True)) & U64
        if return0 is not None and target == return0:
            return "ret0", target
        if text[0] == 0xE9 and return_thunk is not None and target == return_thunk:
            return "null", target
        return "func", target
    return "other", None


def static_call_sites(tables: KernelTables, name: str, init: bool = False) -> list[int]:
    """The inline sites of static call ``name`` (its key ``__SCK__<name>``), sorted;
    without the init-text sites (freed after boot) unless ``init``."""
    keys = {a for a, n in tables.keys.items() if n == name}
    return sorted(s for s, k in tables.static_call.items() if k in keys and (init or not tables.is_init(s)))


def ops_user(func_name: str | None) -> str:
    """The user an ftrace_ops works for, from the name of its ``func`` (``ftrace`` by default)."""
    base = (func_name or "").split("+")[0]
    return OPS_FUNC_USERS.get(base, "ftrace")


def count_users(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """{user: judged traps} over trap-log records (``kind == "judged"``, not skipped), in USERS order."""
    counts: dict[str, int] = {}
    for rec in records:
        if rec.get("kind") == "judged" and rec.get("verdict") != "skipped":
            u = str(rec.get("user") or "unknown")
            counts[u] = counts.get(u, 0) + 1
    return order_users(counts)


def order_users(counts: Mapping[str, int]) -> dict[str, int]:
    """The same counts, users in :data:`USERS` order (others after, by name), zeros dropped."""
    rank = {u: i for i, u in enumerate(USERS)}
    return {u: n for u, n in sorted(counts.items(), key=lambda kv: (rank.get(kv[0], 99), kv[0])) if n}


def add_counts(total: dict[str, int], more: Mapping[str, Any] | None) -> None:
    """Add one run's ``{user: n}`` into ``total`` (ignoring malformed values)."""
    for u, n in (more or {}).items():
        if isinstance(n, int):
            total[str(u)] = total.get(str(u), 0) + n
