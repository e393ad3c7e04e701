"""orchestrator.core.trapdata + orchestrator.core.judge on synthetic records built with struct.pack.

Values are realistic for a 6.1 cloud kernel (``_stext`` 0xffffffff81000000,
ftrace site ``__do_sys_getpid`` 0xffffffff810e7a20, an ftrace trampoline at
0xffffffffc0201000, a kernel stack at 0xffffc900...).  Tests on real captured
records will live beside these and read them from tests/data/.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from orchestrator.core.decode import TableSymbolizer
from orchestrator.core.judge import Judgement, check_final_text, jcc_taken, judge
from orchestrator.core.trapdata import (
    LayoutError,
    RecordError,
    TrapRecord,
    parse_layout,
    parse_text_poke_loc,
    parse_trap_record,
)

STEXT = 0xFFFFFFFF81000000
SITE = 0xFFFFFFFF810E7A20  # __do_sys_getpid
TRAMPOLINE = 0xFFFFFFFFC0201000  # global_ops.trampoline (no vmlinux symbol)
FTRACE_STUB = 0xFFFFFFFF81E7C2A0
SP = 0xFFFFC90000A3FE58
CALLER_RET = 0xFFFFFFFF81C01A3B  # what sits at SP: x64_sys_call's return address
OLD_WORD = 0xFFFFC90000A3FF48  # a stale word somewhere on the stack
ZF, CF, SF, OF, PF = 1 << 6, 1 << 0, 1 << 7, 1 << 11, 1 << 2
IF = 1 << 9

LAYOUT_RAW: dict[str, Any] = {
    "loc_size": 16,
    "fields": {"rel_addr": [0, 4], "disp": [4, 4], "len": [8, 1], "opcode": [9, 1],
               "text": [10, 5], "old": [15, 1]},
    "stext": STEXT,
    "regs": {"ip": 128, "cs": 136, "flags": 144, "sp": 152, "ss": 160, "size": 168},
}  # fmt: skip
LAYOUT = parse_layout(LAYOUT_RAW)
SYM = TableSymbolizer(
    [(SITE, 0x20, "__do_sys_getpid"), (FTRACE_STUB, 1, "ftrace_stub")],
    regions=[("global_ops.trampoline", TRAMPOLINE, 0x1000)],
)


def pt_regs(ip: int, sp: int = SP, flags: int = IF | ZF | PF, cs: int = 0x10) -> bytes:
    """struct pt_regs: r15..orig_ax, ip, cs, flags, sp, ss (21 x u64)."""
    gprs = [0x15, 0x14, 0x13, 0x12, SP + 0x40, 0xB, 0x11, 0x10, 0x9, 0x8,
            0, 0xC, 0xD, 0x51, 0xFFFF888003A1C000, 0xFFFFFFFFFFFFFFFF]  # fmt: skip
    return struct.pack("<21Q", *gprs, ip, cs, flags, sp, 0x18)


def loc(site: int, opcode: int, length: int, disp: int, text: bytes, old: int = 0x0F) -> bytes:
    """struct text_poke_loc { s32 rel_addr; s32 disp; u8 len; u8 opcode; u8 text[5]; u8 old; }."""
    return struct.pack("<iiBB5sB", site - STEXT, disp, length, opcode, text.ljust(5, b"\0"), old)


def rel32(site: int, target: int, length: int = 5) -> int:
    return target - (site + length)


def call_text(site: int, target: int) -> bytes:
    return b"\xe8" + struct.pack("<i", rel32(site, target))


def word(v: int) -> str:
    return struct.pack("<Q", v & (2**64 - 1)).hex()


def record(
    entry: bytes | None,
    post_ip: int,
    post_sp: int = SP,
    stack_word: int = CALLER_RET,
    ret: int = 1,
    pre_ip: int = SITE + 1,
    flags: int = IF | ZF | PF,
    refs: int = 1,
    vec: int = 0xFFFFFFFF83A5C000,
    pre_stack_word: int | None = None,
    injected: str | None = None,
    cs: int = 0x10,
    pre_sp: int = SP,
) -> TrapRecord:
    raw: dict[str, Any] = {
        "cpu": 1,
        "regs_ptr": SP - 0xA8 + 0x100,
        "pre": pt_regs(pre_ip, pre_sp, flags, cs).hex(),
        "desc": {"vec": vec, "nr_entries": 3, "refs": refs},
        "entry": None if entry is None else entry.hex(),
        "entry_index": None if entry is None else 1,
        "post": pt_regs(post_ip, post_sp, flags, cs).hex(),
        "stack_word": word(stack_word),
        "ret": ret,
        "injected": injected,
        "t": 12.5,
    }
    if pre_stack_word is not None:
        raw["pre_stack_word"] = word(pre_stack_word)
    return parse_trap_record(raw, LAYOUT)


def run(rec: TrapRecord) -> Judgement:
    return judge(rec, LAYOUT, SYM)


# ------------------------------------------------------------------ parsing


def test_parse_record_fields() -> None:
    entry = loc(SITE, 0xE8, 5, rel32(SITE, TRAMPOLINE), call_text(SITE, TRAMPOLINE))
    rec = record(entry, TRAMPOLINE, SP - 8, SITE + 5)
    assert rec.pre.ip == SITE + 1 and rec.pre.cs == 0x10 and rec.pre.ss == 0x18
    assert rec.pre.di == 0xFFFF888003A1C000 and rec.pre.orig_ax == 2**64 - 1
    assert rec.entry is not None and rec.entry.site == SITE and rec.entry.old == 0x0F
    assert rec.entry.written == call_text(SITE, TRAMPOLINE)
    assert rec.entry.descriptor_target == TRAMPOLINE
    assert rec.stack_word == SITE + 5 and rec.pre_stack_word is None and rec.t == 12.5


def test_site_wraps_negative_rel_addr() -> None:
    # A module site below _stext: rel_addr is a negative s32.
    site = STEXT - 0x10
    e = parse_text_poke_loc(loc(site, 0xE9, 5, 0, bytes.fromhex("0f1f440000")), LAYOUT)
    assert e.rel_addr == -0x10 and e.site == site


def test_jcc32_written_is_reprefixed() -> None:
    disp = 0x40
    text = bytes([0x84]) + struct.pack("<i", disp)  # tp->text holds opcode+1
    e = parse_text_poke_loc(loc(SITE, 0x74, 6, disp, text), LAYOUT)
    assert e.written == b"\x0f\x84" + struct.pack("<i", disp)


@pytest.mark.parametrize("drop", ["rel_addr", "disp", "len", "opcode", "text"])
def test_layout_missing_field(drop: str) -> None:
    raw = dict(LAYOUT_RAW, fields={k: v for k, v in LAYOUT_RAW["fields"].items() if k != drop})
    with pytest.raises(LayoutError, match=drop):
        parse_layout(raw)


def test_layout_missing_regs_field() -> None:
    raw = dict(LAYOUT_RAW, regs={k: v for k, v in LAYOUT_RAW["regs"].items() if k != "flags"})
    with pytest.raises(LayoutError, match="flags"):
        parse_layout(raw)


def test_layout_without_old_is_fine() -> None:
    raw = dict(LAYOUT_RAW, fields={k: v for k, v in LAYOUT_RAW["fields"].items() if k != "old"})
    e = parse_text_poke_loc(loc(SITE, 0xEB, 2, 0, b"\x66\x90"), parse_layout(raw))
    assert e.old is None


def test_bad_record() -> None:
    with pytest.raises(RecordError):
        parse_trap_record({"cpu": 0, "regs_ptr": 0, "pre": "zz", "post": "", "ret": 1,
                           "desc": {"vec": 0, "nr_entries": 0, "refs": 0}}, LAYOUT)  # fmt: skip


# ------------------------------------------------------------------ CALL

CALL_ENTRY = loc(SITE, 0xE8, 5, rel32(SITE, TRAMPOLINE), call_text(SITE, TRAMPOLINE))


def test_call_ok() -> None:
    j = run(record(CALL_ENTRY, TRAMPOLINE, SP - 8, SITE + 5))
    assert (j.kind, j.verdict) == ("judged", "ok"), j.reason
    assert j.written is not None and j.written.target == TRAMPOLINE
    assert (j.expected_ip, j.expected_sp, j.expected_push) == (TRAMPOLINE, SP - 8, SITE + 5)


def test_call_wrong_target() -> None:
    j = run(record(CALL_ENTRY, FTRACE_STUB, SP - 8, SITE + 5, injected="wrong-target"))
    assert j.verdict == "violation"
    assert "emulated call to 0xffffffff81e7c2a0 (ftrace_stub+0x0)" in j.reason
    assert "global_ops.trampoline+0x0" in j.reason


def test_call_wrong_return() -> None:
    j = run(record(CALL_ENTRY, TRAMPOLINE, SP - 8, SITE, injected="wrong-return"))
    assert j.verdict == "violation"
    assert "pushed return address 0xffffffff810e7a20 (site+0x0)" in j.reason
    assert "expected site+len" in j.reason


def test_call_skipped_as_jmp0() -> None:
    j = run(record(CALL_ENTRY, SITE + 5, SP, CALLER_RET, injected="skip-call"))
    assert j.verdict == "violation"
    assert "no return address pushed" in j.reason and "emulated call to" in j.reason


def test_descriptor_disagrees_with_text() -> None:
    # The 2019 bug class: text says call trampoline, the descriptor (and so the
    # emulation) says call ftrace_stub.  Flagged even though the emulation
    # matches the descriptor.
    entry = loc(SITE, 0xE8, 5, rel32(SITE, FTRACE_STUB), call_text(SITE, TRAMPOLINE))
    j = run(record(entry, FTRACE_STUB, SP - 8, SITE + 5))
    assert j.verdict == "violation"
    assert "descriptor disp disagrees with the text being written" in j.reason


def test_call_not_handled() -> None:
    # c8976ade0c1b class: a live entry, but the handler returned 0 (bsearch missed).
    j = run(record(CALL_ENTRY, SITE + 1, SP, CALLER_RET, ret=0))
    assert j.verdict == "violation"
    assert j.reason.startswith("declined live site: the handler returned 0")


def test_call_opcode_but_text_is_jmp() -> None:
    entry = loc(
        SITE, 0xE8, 5, rel32(SITE, TRAMPOLINE), b"\xe9" + struct.pack("<i", rel32(SITE, TRAMPOLINE))
    )
    j = run(record(entry, TRAMPOLINE, SP - 8, SITE + 5))
    assert j.verdict == "violation" and "text being written is `jmp" in j.reason


def test_static_call_xor5rax_emulated_as_call() -> None:
    target = 0xFFFFFFFF8113E0C0  # __static_call_return0
    entry = loc(SITE, 0xE8, 5, rel32(SITE, target), bytes.fromhex("2e2e2e31c0"))
    j = run(record(entry, target, SP - 8, SITE + 5))
    assert j.verdict == "ok", j.reason
    assert judge(record(entry, target, SP - 8, SITE + 5), LAYOUT, SYM, return0=target).verdict == "ok"


def test_static_call_xor5rax_emulated_elsewhere_is_violation() -> None:
    # a wrong-target injection on an xor5rax entry: disp now names another function
    return0, other = 0xFFFFFFFF8113E0C0, 0xFFFFFFFF8106B710
    for text in ("2e2e2e31c0", "666648 31c0".replace(" ", "")):
        entry = loc(SITE, 0xE8, 5, rel32(SITE, other), bytes.fromhex(text))
        j = judge(record(entry, other, SP - 8, SITE + 5), LAYOUT, SYM, return0=return0)
        assert j.verdict == "violation" and "descriptor disp disagrees" in j.reason, j.reason


def test_static_call_ret_padded_trampoline() -> None:
    # __SCT__ trampoline of a NULL static call: ret; int3 x4, RET emulated (pops)
    entry = loc(SITE, 0xC3, 5, 0, bytes.fromhex("c3cccccccc"))
    back = 0xFFFFFFFF81234567
    j = run(record(entry, back, SP + 8, pre_stack_word=back))
    assert j.verdict == "ok", j.reason


# ------------------------------------------------------------------ JMP / NOP


@pytest.mark.parametrize("text", ["0f1f440000", "e900000000"])
def test_nop5_as_jmp0(text: str) -> None:
    # 6.1 text_poke_loc_init keeps the NOP bytes in text, opcode JMP32, disp 0.
    entry = loc(SITE, 0xE9, 5, 0, bytes.fromhex(text))
    j = run(record(entry, SITE + 5))
    assert j.verdict == "ok", j.reason
    assert j.expected_ip == SITE + 5 and j.expected_sp == SP


def test_nop5_disable_emulated_as_call_is_violation() -> None:
    entry = loc(SITE, 0xE9, 5, 0, bytes.fromhex("0f1f440000"))
    j = run(record(entry, SITE + 5, SP - 8, SITE + 5))
    assert j.verdict == "violation" and "sp = pre.sp-8, expected pre.sp+0" in j.reason


def test_jmp32_ok_and_wrong() -> None:
    target = SITE + 0x1234
    entry = loc(
        SITE, 0xE9, 5, rel32(SITE, target), b"\xe9" + struct.pack("<i", rel32(SITE, target))
    )
    assert run(record(entry, target)).verdict == "ok"
    bad = run(record(entry, SITE + 5))
    assert bad.verdict == "violation" and "emulated jump to" in bad.reason


def test_jmp8_and_nop2() -> None:
    site = 0xFFFFFFFF810A51C4  # a static key in __schedule
    jmp8 = loc(site, 0xEB, 2, 0x37, b"\xeb\x37")
    assert run(record(jmp8, site + 2 + 0x37, pre_ip=site + 1)).verdict == "ok"
    nop2 = loc(site, 0xEB, 2, 0, b"\x66\x90")
    assert run(record(nop2, site + 2, pre_ip=site + 1)).verdict == "ok"
    assert run(record(nop2, site + 2 + 0x37, pre_ip=site + 1)).verdict == "violation"


# ------------------------------------------------------------------ RET


def test_ret_with_pre_stack_word() -> None:
    entry = loc(SITE, 0xC3, 5, 0, bytes.fromhex("c3cccccccc"))
    ok = run(record(entry, CALLER_RET, SP + 8, OLD_WORD, pre_stack_word=CALLER_RET))
    assert ok.verdict == "ok", ok.reason
    bad = run(record(entry, SITE + 5, SP + 8, OLD_WORD, pre_stack_word=CALLER_RET))
    assert bad.verdict == "violation" and "emulated return to" in bad.reason


def test_ret_without_pre_stack_word_judges_sp_only() -> None:
    entry = loc(SITE, 0xC3, 1, 0, b"\xc3")
    j = run(record(entry, CALLER_RET, SP + 8, OLD_WORD))
    assert j.verdict == "ok" and "sp only" in j.reason
    assert run(record(entry, CALLER_RET, SP, OLD_WORD)).verdict == "violation"


# ------------------------------------------------------------------ Jcc


def _reference_taken(cc: int, flags: int) -> bool:
    f = {n: bool(flags & b) for n, b in {"CF": CF, "PF": PF, "ZF": ZF, "SF": SF, "OF": OF}.items()}
    cond = [f["OF"], not f["OF"], f["CF"], not f["CF"], f["ZF"], not f["ZF"],
            f["CF"] or f["ZF"], not (f["CF"] or f["ZF"]), f["SF"], not f["SF"], f["PF"], not f["PF"],
            f["SF"] != f["OF"], f["SF"] == f["OF"], f["ZF"] or f["SF"] != f["OF"],
            not f["ZF"] and f["SF"] == f["OF"]]  # fmt: skip
    return cond[cc]


@pytest.mark.parametrize("cc", range(16))
def test_jcc_taken_table(cc: int) -> None:
    for bits in range(32):
        flags = IF | sum(b for i, b in enumerate((CF, PF, ZF, SF, OF)) if bits >> i & 1)
        assert jcc_taken(cc, flags) == _reference_taken(cc, flags), (cc, hex(flags))


@pytest.mark.parametrize(("cc", "flags", "taken"), [(0x4, ZF, True), (0x4, 0, False),
                                                   (0x5, ZF, False), (0xC, SF, True)])  # fmt: skip
def test_jcc8_emulation(cc: int, flags: int, taken: bool) -> None:
    disp = 0x22
    entry = loc(SITE, 0x70 + cc, 2, disp, bytes([0x70 + cc, disp]))
    right = SITE + 2 + disp if taken else SITE + 2
    wrong = SITE + 2 if taken else SITE + 2 + disp
    assert run(record(entry, right, flags=flags)).verdict == "ok"
    j = run(record(entry, wrong, flags=flags))
    assert j.verdict == "violation" and ("taken" in j.reason or "jump" in j.reason)


def test_jcc32_stored_as_short_opcode() -> None:
    disp = -0x80
    text = bytes([0x85]) + struct.pack("<i", disp)  # jne rel32, minus the 0x0f
    entry = loc(SITE, 0x75, 6, disp, text)
    assert run(record(entry, SITE + 6 + disp, flags=IF)).verdict == "ok"  # ZF clear: taken
    assert run(record(entry, SITE + 6, flags=IF | ZF)).verdict == "ok"  # ZF set: falls through
    assert run(record(entry, SITE + 6, flags=IF)).verdict == "violation"


def test_jcc_condition_mismatch_with_text() -> None:
    entry = loc(SITE, 0x74, 2, 0x10, b"\x75\x10")  # descriptor je, text jne
    j = run(record(entry, SITE + 2 + 0x10, flags=ZF))
    assert j.verdict == "violation" and "text being written is `jne" in j.reason


# ------------------------------------------------------------------ INT3 / unknown


def test_int3_not_consumed() -> None:
    entry = loc(SITE, 0xCC, 1, 0, b"\xcc")
    assert run(record(entry, SITE + 1, ret=0)).verdict == "ok"
    j = run(record(entry, SITE + 5, ret=1))
    assert j.verdict == "violation" and "must not consume" in j.reason


def test_unknown_opcode_skipped() -> None:
    entry = loc(SITE, 0x90, 1, 0, b"\x90")
    j = run(record(entry, SITE + 1))
    assert (j.kind, j.verdict) == ("judged", "skipped") and j.reason.startswith(
        "unknown opcode 0x90"
    )


# ------------------------------------------------------------------ not text_poke


def test_not_text_poke() -> None:
    assert run(record(None, SITE + 1, ret=0, refs=0)).kind == "not-text-poke"  # int3_selftest
    assert run(record(CALL_ENTRY, SITE + 1, refs=0)).kind == "not-text-poke"
    assert run(record(CALL_ENTRY, SITE + 1, vec=0)).kind == "not-text-poke"
    assert run(record(None, SITE + 1, ret=0)).kind == "not-text-poke"
    other = run(record(CALL_ENTRY, SITE + 0x41, pre_ip=SITE + 0x41, ret=0))
    assert other.kind == "not-text-poke" and "ip-1" in other.reason


@pytest.mark.parametrize(("cs", "sp"), [(0x33, SP), (0x10, 0x7FFD5A3C1E08), (0, 0)])
def test_no_pt_regs_in_rdi(cs: int, sp: int) -> None:
    j = run(record(CALL_ENTRY, TRAMPOLINE, cs=cs, pre_sp=sp))
    assert (j.kind, j.reason) == ("not-text-poke", "no pt_regs in rdi")


# ------------------------------------------------------------------ read-back


def test_check_final_text() -> None:
    written = call_text(SITE, TRAMPOLINE)
    assert check_final_text(written + b"\x55\x48", written)[0]
    ok, reason = check_final_text(b"\xcc" + written[1:], written)
    assert not ok and "int3 left" in reason
    ok, reason = check_final_text(bytes.fromhex("0f1f440000"), written)
    assert not ok and "0f 1f 44 00 00" in reason
    assert not check_final_text(b"\xe8", written)[0]
