"""orchestrator.core.decode: capstone decode of the instructions text_poke writes, and naming."""

from __future__ import annotations

import pytest

from orchestrator.core.decode import DecodeError, TableSymbolizer, decode, describe, format_bytes

SITE = 0xFFFFFFFF810E7A20  # __do_sys_getpid (6.1.0-47-cloud)
TRAMPOLINE = 0xFFFFFFFFC0201000  # dynamically allocated ftrace trampoline


def call_bytes(site: int, target: int) -> bytes:
    return b"\xe8" + ((target - (site + 5)) & 0xFFFFFFFF).to_bytes(4, "little")


def test_call_to_trampoline() -> None:
    insn = decode(call_bytes(SITE, TRAMPOLINE), SITE)
    assert (insn.kind, insn.length, insn.target, insn.mnemonic) == ("call", 5, TRAMPOLINE, "call")
    assert insn.raw == call_bytes(SITE, TRAMPOLINE)


@pytest.mark.parametrize(
    ("code", "kind", "length", "target"),
    [
        ("0f1f440000", "nop", 5, None),  # x86_nops[5], ftrace's disabled site
        ("6690", "nop", 2, None),  # x86_nops[2], jump label NOP2
        ("e900000000", "jmp", 5, SITE + 5),
        ("eb10", "jmp", 2, SITE + 0x12),
        ("ebfe", "jmp", 2, SITE),
        ("c3", "ret", 1, None),
        ("c3cccccccc", "ret", 1, None),  # static_call RET padded with INT3
        ("cc", "int3", 1, None),
        ("2e2e2e31c0", "other", 5, None),  # static_call xor5rax
        ("ffe0", "jmp", 2, None),  # indirect: no target
    ],
)
def test_kinds(code: str, kind: str, length: int, target: int | None) -> None:
    insn = decode(bytes.fromhex(code), SITE)
    assert (insn.kind, insn.length, insn.target) == (kind, length, target)


def test_jcc_rel8_and_rel32() -> None:
    short = decode(bytes.fromhex("7410"), SITE)
    assert (short.kind, short.cc, short.target, short.length) == ("jcc", 0x4, SITE + 0x12, 2)
    near = decode(bytes.fromhex("0f8f") + (0x100).to_bytes(4, "little"), SITE)
    assert (near.kind, near.cc, near.target, near.length) == ("jcc", 0xF, SITE + 6 + 0x100, 6)
    back = decode(bytes.fromhex("0f85") + (-0x20 & 0xFFFFFFFF).to_bytes(4, "little"), SITE)
    assert (back.cc, back.target) == (0x5, SITE + 6 - 0x20)


def test_jrcxz_is_not_jcc() -> None:
    assert decode(bytes.fromhex("e300"), SITE).kind == "other"


def test_undecodable() -> None:
    with pytest.raises(DecodeError):
        decode(b"\x0f", SITE)
    with pytest.raises(DecodeError):
        decode(b"", SITE)


def test_format_bytes() -> None:
    assert format_bytes(bytes.fromhex("e8db952f3f")) == "e8 db 95 2f 3f"
    assert format_bytes(b"") == ""


def test_table_symbolizer() -> None:
    sym = TableSymbolizer(
        [
            (0xFFFFFFFF810E7A20, 0x20, "__do_sys_getpid"),
            (0xFFFFFFFF81E7C2A0, 0x1, "ftrace_stub"),
            (0xFFFFFFFF810E7A30, 0, "marker"),
            (0xFFFFFFFF81000000, 0, "_stext"),
        ],
        regions=[("global_ops.trampoline", TRAMPOLINE, 0x1000)],
    )
    assert sym(SITE) == "__do_sys_getpid+0x0"
    assert sym(SITE + 5) == "__do_sys_getpid+0x5"
    assert sym(SITE + 0x18) == "__do_sys_getpid+0x18"  # past a zero-size marker
    assert sym(0xFFFFFFFF810E7A30) == "marker+0x0"
    assert sym(0xFFFFFFFF81E7C2A0) == "ftrace_stub+0x0"
    assert sym(TRAMPOLINE + 0x4F) == "global_ops.trampoline+0x4f"
    assert sym(0xFFFFFFFF81000004) is None
    assert sym(0x1000) is None
    assert describe(TRAMPOLINE, sym) == "0xffffffffc0201000 (global_ops.trampoline+0x0)"
    assert describe(0x1000, sym) == "0x1000"
    assert describe(None, sym) == "?"
