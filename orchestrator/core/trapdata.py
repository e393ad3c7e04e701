"""Typed records for one int3 trap, parsed from the JSON the GDB side emits.

Pure functions only: bytes and dicts in, frozen dataclasses out.  The raw
trap record is one JSON object per trap (hex strings are little-endian guest
memory as read)::

    {"cpu": 1, "regs_ptr": 18446683600570137416,
     "pre": "<struct pt_regs at handler entry, hex>",
     "desc": {"vec": int, "nr_entries": int, "refs": int,
              "vec_max": int (optional: the array bound, TEXT_POKE_ARRAY_MAX / TP_VEC_MAX),
              "in_batch": bool (optional, 6.16+: smp_text_poke_batch_finish() was running)},
     "entry": "<matching struct text_poke_loc, hex>" | null, "entry_index": int | null,
     "post": "<the same struct pt_regs when the handler returns, hex>",
     "stack_word": "<8 bytes at post.sp, hex>",
     "pre_stack_word": "<8 bytes at pre.sp, hex>"   (optional; needed to judge RET fully),
     "ret": int, "injected": null | "wrong-target" | "wrong-return" | "skip-call",
     "t": float}

The layout record comes once, from DWARF::

    {"loc_size": 16,
     "fields": {"rel_addr": [0, 4], "disp": [4, 4], "len": [8, 1], "opcode": [9, 1],
                "text": [10, 5], "old": [15, 1]},
     "stext": int,
     "regs": {"ip": 128, "cs": 136, "flags": 144, "sp": 152, "ss": 160, "size": 168}}

The same field names hold for 6.1's ``struct text_poke_loc`` and 6.16's
``struct smp_text_poke_loc`` (only the struct was renamed, a81d43c46e6e).

A batch record (``POKELAB-BATCH``) is the whole vector as the batch starts
(``text_poke_bp_batch(tp, nr)`` in 6.0-6.15, ``smp_text_poke_batch_finish()``
in 6.16+)::

    {"n": int, "entries": "<n struct text_poke_loc, hex>", "vec_max": int | null, "t": float}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

U64_MASK = (1 << 64) - 1
KERNEL_CS = 0x10
KERNEL_SPACE_START = 0xFFFF800000000000

Injection = Literal["wrong-target", "wrong-return", "skip-call"]
INJECTIONS: tuple[Injection, ...] = ("wrong-target", "wrong-return", "skip-call")
#: ``--inject-every``'s default: every second eligible trap
INJECT_EVERY = 2

# Fields of text_poke_loc the judge needs; "old" is optional.
LOC_FIELDS_REQUIRED = ("rel_addr", "disp", "len", "opcode", "text")
REGS_FIELDS_REQUIRED = ("ip", "cs", "flags", "sp", "ss", "size")

# x86_64 struct pt_regs (arch/x86/include/asm/ptrace.h): fixed by the entry ABI.
PT_REGS_ABI_OFFSETS: tuple[tuple[str, int], ...] = (
    ("r15", 0x00), ("r14", 0x08), ("r13", 0x10), ("r12", 0x18),
    ("bp", 0x20), ("bx", 0x28), ("r11", 0x30), ("r10", 0x38),
    ("r9", 0x40), ("r8", 0x48), ("ax", 0x50), ("cx", 0x58),
    ("dx", 0x60), ("si", 0x68), ("di", 0x70), ("orig_ax", 0x78),
    ("ip", 0x80), ("cs", 0x88), ("flags", 0x90), ("sp", 0x98), ("ss", 0xA0),
)  # fmt: skip


class LayoutError(ValueError):
    """The layout lacks a field the judge needs (the caller reports UNSUPPORTED)."""


class RecordError(ValueError):
    """A trap record is malformed (wrong type, bad hex, too short)."""


@dataclass(frozen=True)
class RegsLayout:
    """Offsets (bytes) of the ``struct pt_regs`` fields we take from DWARF, and its size."""

    ip: int
    cs: int
    flags: int
    sp: int
    ss: int
    size: int


@dataclass(frozen=True)
class Layout:
    """Layout of ``struct text_poke_loc`` (6.1-6.15) / ``struct smp_text_poke_loc`` (6.16+).

    ``fields`` maps a member name to ``(offset, size)``; ``stext`` is ``_stext``.
    """

    loc_size: int
    fields: Mapping[str, tuple[int, int]]
    stext: int
    regs: RegsLayout


@dataclass(frozen=True)
class PtRegs:
    """x86_64 ``struct pt_regs`` (all ``unsigned long``), as saved by the int3 entry."""

    r15: int
    r14: int
    r13: int
    r12: int
    bp: int
    bx: int
    r11: int
    r10: int
    r9: int
    r8: int
    ax: int
    cx: int
    dx: int
    si: int
    di: int
    orig_ax: int
    ip: int
    cs: int
    flags: int
    sp: int
    ss: int


@dataclass(frozen=True)
class TextPokeLoc:
    """``struct text_poke_loc`` (6.1 .. 6.15) / ``struct smp_text_poke_loc`` (6.16+).

    ``rel_addr`` (s32) and ``disp`` (s32) are signed; ``len``/``opcode``/``old``
    are u8; ``text`` is ``u8 text[POKE_MAX_OPCODE_SIZE]``.  ``site`` is
    ``_stext + rel_addr`` wrapped to 64 bits.  For a Jcc.d32 (``len == 6``) the
    kernel stores only the last 5 bytes in ``text`` and maps ``opcode`` to the
    Jcc.d8 opcode (0x70 + cc).
    """

    rel_addr: int
    disp: int
    len: int
    opcode: int
    text: bytes
    old: int | None
    site: int

    @property
    def written(self) -> bytes:
        """The instruction bytes the batch writes at ``site`` (``0x0f`` re-prefixed for len 6)."""
        if self.len == 6:
            return b"\x0f" + self.text[:5]
        return self.text[: self.len]

    @property
    def descriptor_target(self) -> int:
        """``site + len + disp``: where the handler sends a CALL/JMP/taken Jcc."""
        return (self.site + self.len + self.disp) & U64_MASK


@dataclass(frozen=True)
class PatchDesc:
    """``struct bp_patching_desc`` (6.0-6.15: vec, nr_entries, atomic_t refs).

    For 6.16+ ``vec`` is ``&text_poke_array.vec[0]`` (an inline array) and
    ``refs`` the trapping CPU's per-CPU ``atomic_t text_poke_array_refs``.
    ``vec_max`` is the array bound (``TEXT_POKE_ARRAY_MAX``; ``TP_VEC_MAX`` of
    ``tp_vec`` before 6.16), None if unknown.  ``in_batch`` is None when not
    tracked (6.0-6.15), else whether ``smp_text_poke_batch_finish()`` was
    running when the trap was taken.
    """

    vec: int
    nr_entries: int
    refs: int
    vec_max: int | None = None
    in_batch: bool | None = None


@dataclass(frozen=True)
class BatchRecord:
    """The vector one batch writes, read as the batch starts (see the module docstring)."""

    entries: tuple[TextPokeLoc, ...]
    vec_max: int | None
    t: float


@dataclass(frozen=True)
class TrapRecord:
    """One int3 trap seen at ``poke_int3_handler`` entry and at its return."""

    cpu: int
    regs_ptr: int
    pre: PtRegs
    desc: PatchDesc
    entry: TextPokeLoc | None
    entry_index: int | None
    post: PtRegs
    stack_word: int | None
    pre_stack_word: int | None
    ret: int
    injected: Injection | None
    t: float


# ---------------------------------------------------------------- helpers


def _int(obj: object, what: str) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int):
        raise RecordError(f"{what}: expected an integer, got {obj!r}")
    return obj


def _hex(obj: object, what: str) -> bytes:
    if not isinstance(obj, str):
        raise RecordError(f"{what}: expected a hex string, got {type(obj).__name__}")
    s = obj.strip()
    if s.startswith(("0x", "0X")):
        s = s[2:]
    try:
        return bytes.fromhex(s)
    except ValueError as exc:
        raise RecordError(f"{what}: bad hex: {exc}") from None


def _field(data: bytes, offset: int, size: int, signed: bool, what: str) -> int:
    if offset < 0 or offset + size > len(data):
        raise RecordError(f"{what} at [{offset}, {size}] is outside {len(data)} bytes")
    return int.from_bytes(data[offset : offset + size], "little", signed=signed)


def _pair(obj: object, what: str) -> tuple[int, int]:
    if not isinstance(obj, (list, tuple)) or len(obj) != 2:
        raise LayoutError(f"layout field {what}: expected [offset, size], got {obj!r}")
    off, size = obj
    if isinstance(off, bool) or isinstance(size, bool):
        raise LayoutError(f"layout field {what}: not integers: {obj!r}")
    if not isinstance(off, int) or not isinstance(size, int) or off < 0 or size <= 0:
        raise LayoutError(f"layout field {what}: bad [offset, size] {obj!r}")
    return off, size


# ---------------------------------------------------------------- parsers


def parse_layout(obj: Mapping[str, object]) -> Layout:
    """Parse the once-per-run layout record; ``LayoutError`` names what is missing."""
    if "loc_size" not in obj or "stext" not in obj:
        raise LayoutError("layout lacks loc_size or stext")
    loc_size, stext = obj["loc_size"], obj["stext"]
    if not isinstance(loc_size, int) or not isinstance(stext, int):
        raise LayoutError("layout loc_size/stext must be integers")
    raw_fields = obj.get("fields")
    if not isinstance(raw_fields, Mapping):
        raise LayoutError("layout lacks text_poke_loc fields")
    fields: dict[str, tuple[int, int]] = {}
    for name, val in raw_fields.items():
        fields[str(name)] = _pair(val, str(name))
    missing = [f for f in LOC_FIELDS_REQUIRED if f not in fields]
    if missing:
        raise LayoutError(f"text_poke_loc lacks field(s): {', '.join(missing)}")
    for name, (off, size) in fields.items():
        if off + size > loc_size:
            raise LayoutError(f"text_poke_loc.{name} [{off}, {size}] exceeds loc_size {loc_size}")
    if fields["text"][1] < 5:
        raise LayoutError(f"text_poke_loc.text is {fields['text'][1]} bytes, need >= 5")
    raw_regs = obj.get("regs")
    if not isinstance(raw_regs, Mapping):
        raise LayoutError("layout lacks pt_regs offsets")
    missing = [f for f in REGS_FIELDS_REQUIRED if not isinstance(raw_regs.get(f), int)]
    if missing:
        raise LayoutError(f"pt_regs lacks field(s): {', '.join(missing)}")
    regs = RegsLayout(**{f: cast(int, raw_regs[f]) for f in REGS_FIELDS_REQUIRED})
    if max(regs.ip, regs.cs, regs.flags, regs.sp, regs.ss) + 8 > regs.size:
        raise LayoutError(f"pt_regs offsets exceed its size {regs.size}")
    return Layout(loc_size=loc_size, fields=fields, stext=stext & U64_MASK, regs=regs)


def parse_pt_regs(data: bytes, regs: RegsLayout) -> PtRegs:
    """Decode a little-endian ``struct pt_regs``; ip/cs/flags/sp/ss at the DWARF offsets."""
    if len(data) < regs.size:
        raise RecordError(f"pt_regs: {len(data)} bytes, layout says {regs.size}")
    from_dwarf = {"ip": regs.ip, "cs": regs.cs, "flags": regs.flags, "sp": regs.sp, "ss": regs.ss}
    values = {
        name: _field(data, from_dwarf.get(name, off), 8, False, f"pt_regs.{name}")
        for name, off in PT_REGS_ABI_OFFSETS
    }
    return PtRegs(**values)


def parse_text_poke_loc(data: bytes, layout: Layout) -> TextPokeLoc:
    """Decode one ``struct text_poke_loc``; ``site = _stext + (s32)rel_addr`` (64-bit wrap)."""
    if len(data) < layout.loc_size:
        raise RecordError(f"text_poke_loc: {len(data)} bytes, layout says {layout.loc_size}")
    f = layout.fields
    rel_addr = _field(data, *f["rel_addr"], True, "rel_addr")
    disp = _field(data, *f["disp"], True, "disp")
    length = _field(data, *f["len"], False, "len")
    opcode = _field(data, *f["opcode"], False, "opcode")
    toff, tsize = f["text"]
    text = bytes(data[toff : toff + tsize])
    old = _field(data, *f["old"], False, "old") if "old" in f else None
    site = (layout.stext + rel_addr) & U64_MASK
    return TextPokeLoc(rel_addr, disp, length, opcode, text, old, site)


def parse_word(hexstr: object, what: str) -> int:
    """One little-endian u64 from an 8-byte hex dump."""
    data = _hex(hexstr, what)
    if len(data) < 8:
        raise RecordError(f"{what}: {len(data)} bytes, need 8")
    return int.from_bytes(data[:8], "little")


def parse_trap_record(obj: Mapping[str, object], layout: Layout) -> TrapRecord:
    """Parse one raw trap record (see the module docstring) against ``layout``."""
    desc_raw = obj.get("desc")
    if not isinstance(desc_raw, Mapping):
        raise RecordError("desc: expected an object")
    vec_max_raw, in_batch_raw = desc_raw.get("vec_max"), desc_raw.get("in_batch")
    if in_batch_raw is not None and not isinstance(in_batch_raw, bool):
        raise RecordError(f"desc.in_batch: expected a boolean, got {in_batch_raw!r}")
    desc = PatchDesc(
        vec=_int(desc_raw.get("vec"), "desc.vec") & U64_MASK,
        nr_entries=_int(desc_raw.get("nr_entries"), "desc.nr_entries"),
        refs=_int(desc_raw.get("refs"), "desc.refs"),
        vec_max=None if vec_max_raw is None else _int(vec_max_raw, "desc.vec_max"),
        in_batch=in_batch_raw,
    )
    entry_raw = obj.get("entry")
    entry = None if entry_raw is None else parse_text_poke_loc(_hex(entry_raw, "entry"), layout)
    idx_raw = obj.get("entry_index")
    entry_index = None if idx_raw is None else _int(idx_raw, "entry_index")
    injected_raw = obj.get("injected")
    if injected_raw is not None and injected_raw not in INJECTIONS:
        raise RecordError(f"injected: unknown value {injected_raw!r}")
    stack_raw = obj.get("stack_word")
    pre_stack_raw = obj.get("pre_stack_word")
    t_raw = obj.get("t", 0.0)
    if isinstance(t_raw, bool) or not isinstance(t_raw, (int, float)):
        raise RecordError(f"t: expected a number, got {t_raw!r}")
    ret = _int(obj.get("ret"), "ret") & 0xFFFFFFFF  # int return value: eax
    if ret >= 1 << 31:
        ret -= 1 << 32
    return TrapRecord(
        cpu=_int(obj.get("cpu"), "cpu"),
        regs_ptr=_int(obj.get("regs_ptr"), "regs_ptr") & U64_MASK,
        pre=parse_pt_regs(_hex(obj.get("pre"), "pre"), layout.regs),
        desc=desc,
        entry=entry,
        entry_index=entry_index,
        post=parse_pt_regs(_hex(obj.get("post"), "post"), layout.regs),
        stack_word=None if stack_raw is None else parse_word(stack_raw, "stack_word"),
        pre_stack_word=None
        if pre_stack_raw is None
        else parse_word(pre_stack_raw, "pre_stack_word"),
        ret=ret,
        injected=injected_raw,
        t=float(t_raw),
    )


def parse_batch_record(obj: Mapping[str, object], layout: Layout) -> BatchRecord:
    """Parse one ``POKELAB-BATCH`` record: ``n`` entries of ``layout.loc_size`` bytes each."""
    n = _int(obj.get("n"), "n")
    blob = _hex(obj.get("entries"), "entries")
    if n <= 0 or len(blob) != n * layout.loc_size:
        raise RecordError(f"batch: {len(blob)} bytes for n = {n} entries of {layout.loc_size}")
    size = layout.loc_size
    entries = tuple(parse_text_poke_loc(blob[i * size : (i + 1) * size], layout) for i in range(n))
    vec_max_raw = obj.get("vec_max")
    t_raw = obj.get("t", 0.0)
    if isinstance(t_raw, bool) or not isinstance(t_raw, (int, float)):
        raise RecordError(f"t: expected a number, got {t_raw!r}")
    return BatchRecord(
        entries=entries,
        vec_max=None if vec_max_raw is None else _int(vec_max_raw, "vec_max"),
        t=float(t_raw),
    )


def int3_before_sites(obj: dict[str, Any]) -> frozenset[int]:
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


def layout_from_setup(info: dict[str, Any]) -> Layout:
    """The judge's Layout from the GDB side's DWARF report (LayoutError if incomplete)."""
    rf = info.get("regs_fields") or {}
    regs: dict[str, Any] = {k: rf[k][0] for k in ("ip", "cs", "flags", "sp", "ss") if k in rf}
    regs["size"] = info.get("regs_size")
    return parse_layout({"loc_size": info.get("loc_size"), "fields": info.get("loc_fields"),
                         "stext": info.get("stext"), "regs": regs})
