"""Decode x86-64 instruction bytes with capstone, and name addresses.

The only module that imports capstone.  Pure: bytes in, ``Insn`` out.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Protocol

import capstone
from capstone import x86 as cs_x86

U64_MASK = (1 << 64) - 1

InsnKind = Literal["call", "jmp", "jcc", "ret", "nop", "int3", "other"]

# Condition-code names by the low nibble of 0x70+cc / 0x0f 0x80+cc (Intel SDM order).
CC_NAMES = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")


class DecodeError(ValueError):
    """Capstone could not decode the bytes as one x86-64 instruction."""


@dataclass(frozen=True)
class Insn:
    """One decoded instruction.

    ``target`` is the absolute (64-bit) destination of a direct call/jmp/jcc,
    ``None`` otherwise (indirect branches included).  ``cc`` is the condition
    code 0x0-0xf of a Jcc (rel8 or rel32 form), else ``None``.
    """

    address: int
    raw: bytes
    mnemonic: str
    op_str: str
    length: int
    kind: InsnKind
    target: int | None
    cc: int | None

    def __str__(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


@lru_cache(maxsize=1)
def _engine() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def _kind(mnemonic: str, groups: Iterable[int], opcode0: int, opcode1: int) -> InsnKind:
    base = mnemonic.split()[-1] if mnemonic else ""
    gs = set(groups)
    if base == "int3":
        return "int3"
    if base == "nop":
        return "nop"
    if base == "call":
        return "call"
    if base == "ret":
        return "ret"
    if base == "jmp":
        return "jmp"
    if capstone.CS_GRP_JUMP in gs and (
        0x70 <= opcode0 <= 0x7F or (opcode0 == 0x0F and 0x80 <= opcode1 <= 0x8F)
    ):
        return "jcc"
    return "other"  # retf, jrcxz, loop, ...: nothing text_poke emulates


def decode(code: bytes, address: int) -> Insn:
    """Decode the first instruction of ``code`` placed at ``address``.

    Raises ``DecodeError`` when capstone finds no valid instruction.
    """
    insn = next(_engine().disasm(bytes(code), address & U64_MASK, count=1), None)
    if insn is None:
        raise DecodeError(f"cannot decode {format_bytes(code)} at {address:#x}")
    op = list(insn.opcode)
    opcode0, opcode1 = op[0], op[1]
    kind = _kind(insn.mnemonic, insn.groups, opcode0, opcode1)
    target: int | None = None
    if kind in ("call", "jmp", "jcc"):
        imms = [o.imm for o in insn.operands if o.type == cs_x86.X86_OP_IMM]
        if imms:
            target = imms[0] & U64_MASK
    cc: int | None = None
    if kind == "jcc":
        cc = (opcode0 if opcode0 != 0x0F else opcode1) & 0xF
    return Insn(
        address=address & U64_MASK,
        raw=bytes(insn.bytes),
        mnemonic=insn.mnemonic,
        op_str=insn.op_str,
        length=insn.size,
        kind=kind,
        target=target,
        cc=cc,
    )


def format_bytes(data: bytes) -> str:
    """``b'\\xe8\\x00'`` -> ``'e8 00'``."""
    return " ".join(f"{b:02x}" for b in data)


class Symbolizer(Protocol):
    """Names an address as ``"func+0xoff"``, or returns ``None`` when it cannot."""

    def __call__(self, addr: int) -> str | None: ...


class TableSymbolizer:
    """A ``Symbolizer`` over ``(address, size, name)`` symbols plus named regions.

    Regions are ``(name, start, size)`` for memory with no vmlinux symbol, such
    as dynamically allocated ftrace trampolines
    (``("global_ops.trampoline", 0xffffffffc0201000, 0x1000)``); they win over
    symbols.  A symbol of size 0 names only its own address.
    """

    def __init__(
        self,
        symbols: Iterable[tuple[int, int, str]],
        regions: Iterable[tuple[str, int, int]] = (),
    ) -> None:
        table = sorted((a & U64_MASK, s, n) for a, s, n in symbols)
        self._starts = [a for a, _, _ in table]
        self._table = table
        self._regions = tuple((n, s & U64_MASK, z) for n, s, z in regions)

    def __call__(self, addr: int) -> str | None:
        addr &= U64_MASK
        for name, start, size in self._regions:
            if start <= addr < start + size:
                return f"{name}+{addr - start:#x}"
        i = bisect.bisect_right(self._starts, addr) - 1
        # Look back past a few zero-size markers/aliases for the enclosing symbol.
        for j in range(i, max(-1, i - 16), -1):
            start, size, name = self._table[j]
            if start == addr or addr < start + size:
                return f"{name}+{addr - start:#x}"
        return None


def describe(addr: int | None, symbolize: Symbolizer | None) -> str:
    """``0xffff... (func+0x10)``, or just the hex when unnamed, ``?`` for ``None``."""
    if addr is None:
        return "?"
    name = symbolize(addr) if symbolize is not None else None
    return f"{addr:#x} ({name})" if name else f"{addr:#x}"
