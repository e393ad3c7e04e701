"""Judge one int3 trap: did ``poke_int3_handler`` emulate exactly the instruction being written?

What the kernel does (read from the sources, not assumed)
--------------------------------------------------------
Sources read: upstream ``arch/x86/kernel/alternative.c`` /
``arch/x86/include/asm/text-patching.h`` as of 6.2.1 (stable diff carrying
ac0ee0a9560c "Teach text_poke_bp() to patch Jcc.d32 instructions" and
db7adcfd1cec "Introduce int3_emulate_jcc()"; both backported to 6.1.y and
5.15.y, so 6.1.y has the Jcc case), a 6.6-6.15 era full alternative.c
(``bp_desc`` a static struct since efd608fa7403, ``raw_atomic_inc_not_zero``),
and the 6.16 series (Ingo Molnar's 2025 x86/alternatives series, merged for
6.16; hashes as in the list that holds c8976ade0c1b): 5236b6a0fe92 renamed the
handler ``smp_text_poke_int3_handler``, a81d43c46e6e the struct
``smp_text_poke_loc``, 6e7dc03aeeb5 + 0494b16b9cae made ``static struct
smp_text_poke_array { struct smp_text_poke_loc vec[TEXT_POKE_ARRAY_MAX]; int
nr_entries; } text_poke_array`` (vec inline), 4334336e769b made the refs per
CPU (``bp_refs``, renamed ``text_poke_array_refs`` by 28fb79092d9f: read the
trapping CPU's), e8d7b8c2bbcd + 23a76739d6af made
``smp_text_poke_batch_finish(void)`` the batch.  Checked against Debian's
7.3.4 DWARF (vec[256] @0, nr_entries @4096; ``smp_text_poke_single`` calls
``smp_text_poke_batch_add``, i.e. carries the 2aebf5ee43bf fix).  The
emulation code is identical in all of them.  Not read directly: a
6.1.y or 6.12.y tag tree (the torvalds/linux snapshot is too large to fetch;
the stored alternative.c is 2.6-era), so 6.1.y/6.12.y are inferred from the
stable backports above plus KERNEL-FACTS.md.

``struct text_poke_loc`` (6.1 .. 6.15; ``smp_text_poke_loc`` in 6.16+), 16 bytes::

    s32 rel_addr @0   /* addr := _stext + rel_addr */
    s32 disp     @4
    u8  len      @8
    u8  opcode   @9
    u8  text[POKE_MAX_OPCODE_SIZE] @10   /* 5 in 6.1 and 6.12 (TEXT_POKE_MAX_OPCODE_SIZE in 6.16) */
    u8  old      @15  /* first byte before the int3, set by the batch */

``text_poke_loc_init(tp, addr, opcode, len, emulate)``:
  * ``memcpy(tp->text, opcode + i, len - i)`` with ``i = (len == 6)``: ``text``
    holds the bytes being WRITTEN, minus the 0x0f of a Jcc.d32 (the batch
    re-prefixes 0x0f when ``len == 6``).
  * ``emulate`` defaults to ``opcode``; it is decoded with insn_decode_kernel
    and ``tp->opcode = opcode byte 0``; a Jcc.d32 (0f 8x) is mapped to
    ``0x8x - 0x10`` = its Jcc.d8 opcode 0x7x, ``len`` (6) tells them apart.
  * ``tp->len = len``; RET/JMP32/JMP8 may be padded with INT3 up to ``len``,
    anything else must have ``len == insn.length``.
  * CALL/JMP32/JMP8/Jcc: ``tp->disp = insn.immediate.value`` (sign-extended).
  * Any other opcode is assumed a NOP: NOP2 -> ``opcode = JMP8, disp = 0``;
    NOP5 -> ``opcode = JMP32, disp = 0``; ``text`` keeps the NOP bytes.
    So 6.1 (and 6.12) store a NOP5 as ``0f 1f 44 00 00`` in ``text`` (ftrace's
    ``ftrace_nop_replace()`` = ``x86_nops[5]``), NOT as ``e9 00 00 00 00``.
  * ``emulate != NULL`` (static_call only; ftrace passes NULL) may make the
    descriptor differ from ``text``: e.g. ``xor5rax`` (``2e 2e 2e 31 c0``)
    written while a CALL to ``__static_call_return0`` is emulated
    (``__static_call_transform()``, arch/x86/kernel/static_call.c: ``case CALL:
    if (func == &__static_call_return0) { emulate = code; code = &xor5rax; }``).
    That is the only ``emulate`` use, so the call emulated for an xor5rax text
    must go to ``__static_call_return0`` (checked when its address is known).
    The other static-call forms are plain: CALL/JMP retargets, NOP5 (a NULL
    call site, queued as JMP32 +0), and at a ``__SCT__`` trampoline JMP32 or
    ``ret; int3 x4`` (RET padded to 5) or ``jmp __x86_return_thunk``.

``poke_int3_handler(regs)`` (returns int):
  * user mode, ``refs == 0`` (``try_get_desc`` fails), or no entry at
    ``regs->ip - 1`` (bsearch over the sorted vector, or a direct compare when
    ``nr_entries == 1``) -> return 0, regs untouched.
  * ``ip = site + tp->len`` then, by ``tp->opcode``:
      - INT3 0xCC: not consumed, return 0, regs untouched;
      - RET 0xC3: ``regs->ip = *(u64 *)regs->sp; regs->sp += 8``;
      - CALL 0xE8: ``regs->sp -= 8; *(u64 *)regs->sp = site + len;
        regs->ip = site + len + disp``;
      - JMP32 0xE9 / JMP8 0xEB: ``regs->ip = site + len + disp`` (sp unchanged);
      - Jcc 0x70..0x7F (incl. Jcc.d32 stored as 0x7x with len 6):
        ``int3_emulate_jcc(regs, opcode & 0xf, site + len, disp)``: taken per
        regs->flags (OF, CF, ZF, CF|ZF, SF, PF; SF^OF; ZF|(SF^OF); odd cc
        inverts) -> ``ip = site + len + disp``, else ``site + len``;
      - anything else: BUG().
    and returns 1.

What the judge checks is exactly that, plus the 2019 rule (Linus, LKML
2019-05-06): the target emulated must be the target of the instruction being
written, so the descriptor's ``site + len + disp`` is cross-checked against
capstone's decode of ``text``.

The descriptor's own invariants (``check_vector``, and per trap)
----------------------------------------------------------------
* The vector is sorted by site, no duplicates: the handler finds its entry
  with ``__inline_bsearch`` (``patch_cmp`` on ``_stext + rel_addr``), and
  ``smp_text_poke_batch_add()`` flushes early when a new address is lower
  (``text_poke_addr_ordered()``).  c8976ade0c1b (6.16-rc1) let
  ``smp_text_poke_single()`` add without that check; an unsorted vector made
  the bsearch miss live sites ("Oops: int3"); 2aebf5ee43bf (6.16-rc3) fixed it.
* ``nr_entries`` is within the array (``TEXT_POKE_ARRAY_MAX``, the DWARF bound
  of ``text_poke_array.vec``; ``TP_VEC_MAX`` of ``tp_vec`` before 6.16).
* A "declined live site": the handler returned 0 for an int3 at an address the
  descriptor holds while the batch is live (refs held, or 6.16+'s
  ``smp_text_poke_batch_finish()`` running: it sets every CPU's
  ``text_poke_array_refs`` to 1 before the first int3 and drops them only
  after the last sync).  ``exc_int3`` then finds no other owner and the CPU
  dies with "Oops: int3"; the probe sees the return before that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .decode import CC_NAMES, DecodeError, Insn, Symbolizer, decode, describe, format_bytes
from .trapdata import KERNEL_CS, KERNEL_SPACE_START, U64_MASK, BatchRecord, Layout, TextPokeLoc, TrapRecord

INT3, RET, CALL, JMP32, JMP8 = 0xCC, 0xC3, 0xE8, 0xE9, 0xEB
KNOWN_OPCODES = frozenset({INT3, RET, CALL, JMP32, JMP8, *range(0x70, 0x80)})

# static_call's 5-byte "xor %eax,%eax" forms, written while a CALL to
# __static_call_return0 is emulated (text_poke_bp(..., emulate)).
XOR5RAX = frozenset({bytes.fromhex("2e 2e 2e 31 c0"), bytes.fromhex("66 66 48 31 c0")})

X86_CF, X86_PF, X86_ZF, X86_SF, X86_OF = 0, 2, 6, 7, 11

Kind = Literal["not-text-poke", "judged"]
Verdict = Literal["ok", "violation", "skipped"]


@dataclass(frozen=True)
class Judgement:
    """The verdict on one trap, with what was expected and what the handler did.

    ``site`` is the patched address (``_stext + rel_addr``), ``opcode`` the
    descriptor's ``u8 opcode``, ``written`` the instruction being written
    (decoded from ``text``), ``*_push`` the u64 at the new ``regs->sp``.
    """

    kind: Kind
    verdict: Verdict
    reason: str
    site: int | None = None
    opcode: int | None = None
    written: Insn | None = None
    expected_ip: int | None = None
    expected_sp: int | None = None
    expected_push: int | None = None
    actual_ip: int | None = None
    actual_sp: int | None = None
    actual_push: int | None = None


def jcc_taken(cc: int, flags: int) -> bool:
    """Whether Jcc condition ``cc`` (0x0-0xf) holds for ``flags`` (``regs->flags``, EFLAGS)."""

    def bit(n: int) -> bool:
        return bool((flags >> n) & 1)

    sf_ne_of = bit(X86_SF) != bit(X86_OF)
    match = (
        bit(X86_OF),
        bit(X86_CF),
        bit(X86_ZF),
        bit(X86_CF) or bit(X86_ZF),
        bit(X86_SF),
        bit(X86_PF),
        sf_ne_of,
        bit(X86_ZF) or sf_ne_of,
    )[(cc & 0xF) >> 1]
    return match != bool(cc & 1)


def _sdelta(a: int, b: int) -> int:
    """``a - b`` as a signed 64-bit difference."""
    return ((a - b + (1 << 63)) & U64_MASK) - (1 << 63)


def _rel(addr: int, site: int) -> str:
    d = _sdelta(addr, site)
    return f"site{d:+#x}" if abs(d) < 0x1000 else f"{addr:#x}"


def _written_target(e: TextPokeLoc, w: Insn, return0: int | None) -> tuple[int | None, str | None, str]:
    """For a CALL/JMP/Jcc entry: (target implied by the written text, problem, note)."""
    shown = f"`{w}` [{format_bytes(e.written)}]"
    if e.opcode == CALL:
        if w.kind == "call" and w.target is not None:
            return w.target, None, ""
        if e.written in XOR5RAX:
            if return0 is not None:
                return return0, None, " (static_call xor5rax: a call to __static_call_return0)"
            return None, None, " (text is static_call xor5rax: call target from the descriptor)"
        return None, f"descriptor opcode 0xe8 (call) but the text being written is {shown}", ""
    if e.opcode in (JMP32, JMP8):
        if w.kind == "jmp" and w.target is not None:
            return w.target, None, ""
        if w.kind == "nop" and w.length == e.len:
            return (e.site + e.len) & U64_MASK, None, " (NOP queued as JMP +0)"
        return (
            None,
            f"descriptor opcode {e.opcode:#04x} (jmp) but the text being written is {shown}",
            "",
        )
    if w.kind == "jcc" and w.target is not None and w.cc == (e.opcode & 0xF):
        return w.target, None, ""
    cc = CC_NAMES[e.opcode & 0xF]
    return (
        None,
        f"descriptor opcode {e.opcode:#04x} (j{cc}) but the text being written is {shown}",
        "",
    )


def judge(rec: TrapRecord, layout: Layout, symbolize: Symbolizer | None = None,
          return0: int | None = None) -> Judgement:
    """Judge one trap record against the kernel semantics in the module docstring.

    ``layout`` is accepted for the API (offsets were applied by the parser);
    ``symbolize`` only improves the wording of reasons; ``return0`` is the
    address of ``__static_call_return0`` (the call an xor5rax text stands for;
    None: trust the descriptor's target for that form).
    """
    del layout
    pre, post = rec.pre, rec.post
    seen = Judgement("not-text-poke", "skipped", "", actual_ip=post.ip, actual_sp=post.sp)
    if pre.cs != KERNEL_CS or pre.sp < KERNEL_SPACE_START:
        return replace(seen, reason="no pt_regs in rdi")
    if rec.desc.refs == 0 and not rec.desc.in_batch:
        return replace(seen, reason="refs == 0: no text_poke batch in flight")
    if rec.desc.vec == 0:
        return replace(seen, reason="descriptor vec == NULL")
    e = rec.entry
    ip1 = (pre.ip - 1) & U64_MASK
    if e is None or e.site != ip1:
        return replace(seen, reason=f"no text_poke_loc matches ip-1 = {ip1:#x}")
    desc_probs = _desc_problems(rec)

    site, sp0 = e.site, pre.sp
    where = describe(site, symbolize)
    j = Judgement(
        "judged", "ok", "", site=site, opcode=e.opcode,
        actual_ip=post.ip, actual_sp=post.sp, actual_push=rec.stack_word,
    )  # fmt: skip
    if e.opcode not in KNOWN_OPCODES:
        return replace(j, verdict="skipped", reason=f"unknown opcode {e.opcode:#04x} at {where}")
    try:
        w: Insn | None = decode(e.written, site)
    except DecodeError:
        w = None
    j = replace(j, written=w)

    if e.opcode == INT3:
        j = replace(j, expected_ip=pre.ip, expected_sp=sp0)
        int3_probs: list[str] = list(desc_probs)
        if rec.ret != 0:
            int3_probs.append(
                f"handler returned {rec.ret} for an explicit INT3 entry (must not consume it)"
            )
        if post.ip != pre.ip or post.sp != pre.sp:
            int3_probs.append(f"regs changed for an explicit INT3 entry (ip {_rel(post.ip, site)})")
        return _finish(j, int3_probs, f"INT3 at {where} left to other handlers", where)

    if w is None:
        reason = f"text being written [{format_bytes(e.written)}] does not decode"
        return _finish(j, [*desc_probs, reason], "", where)
    pad = e.written[w.length : e.len]
    if w.length != e.len and not (w.kind in ("ret", "jmp") and pad == b"\xcc" * len(pad)):
        reason = f"entry len {e.len} but the text being written `{w}` is {w.length} bytes"
        return _finish(j, [*desc_probs, reason], "", where)

    next_ip = (site + e.len) & U64_MASK
    probs: list[str] = []
    note = ""
    exp_ip: int | None
    exp_push: int | None = None
    if e.opcode == RET:
        if w.kind != "ret":
            probs.append(f"descriptor opcode 0xc3 (ret) but the text being written is `{w}`")
        exp_sp = (sp0 + 8) & U64_MASK
        exp_ip = rec.pre_stack_word
        if exp_ip is None:
            note = " (no pre_stack_word: judged sp only)"
    else:
        target, problem, note = _written_target(e, w, return0)
        desc_target = e.descriptor_target
        if problem:
            probs.append(problem)
        elif target is not None and target != desc_target:
            probs.append(
                "descriptor disp disagrees with the text being written: site+len+disp = "
                f"{describe(desc_target, symbolize)}, `{w}` goes to {describe(target, symbolize)}"
            )
        target = desc_target if target is None else target
        if e.opcode == CALL:
            exp_ip, exp_sp, exp_push = target, (sp0 - 8) & U64_MASK, next_ip
        elif e.opcode in (JMP32, JMP8):
            exp_ip, exp_sp = target, sp0
        else:
            taken = jcc_taken(e.opcode & 0xF, pre.flags)
            exp_ip, exp_sp = (target if taken else next_ip), sp0
            state = "taken" if taken else "not taken"
            note += f" (j{CC_NAMES[e.opcode & 0xF]} {state}, flags {pre.flags:#x})"
    j = replace(j, expected_ip=exp_ip, expected_sp=exp_sp, expected_push=exp_push)

    probs[:0] = desc_probs
    if rec.ret == 0:
        # Regs are untouched then; the CPU will die with "Oops: int3" (c8976ade0c1b class).
        why = (" with this CPU's refs == 0 while the batch runs (refs not held)"
               if rec.desc.refs == 0 else "")
        probs.insert(0, f"declined live site: the handler returned 0 for `{w}`, an entry of the "
                        f"live text_poke vector{why}; the CPU dies with \"Oops: int3\"")
        return _finish(j, probs, "", where)
    if rec.ret != 1:
        probs.append(f"handler returned {rec.ret}, expected 1")
    if exp_ip is not None and post.ip != exp_ip:
        verb = {CALL: "call", RET: "return"}.get(e.opcode, "jump")
        jcc = note if 0x70 <= e.opcode <= 0x7F else ""
        probs.append(
            f"emulated {verb} to {describe(post.ip, symbolize)} "
            f"but expected {describe(exp_ip, symbolize)} (written: `{w}`){jcc}"
        )
    if post.sp != exp_sp:
        d, want = _sdelta(post.sp, sp0), _sdelta(exp_sp, sp0)
        extra = " (no return address pushed)" if e.opcode == CALL and d == 0 else ""
        probs.append(f"sp = pre.sp{d:+d}, expected pre.sp{want:+d}{extra}")
    if exp_push is not None and post.sp == exp_sp:
        if rec.stack_word is None:
            note += " (no stack_word: push not checked)"
        elif rec.stack_word != exp_push:
            probs.append(
                f"pushed return address {rec.stack_word:#x} ({_rel(rec.stack_word, site)}), "
                f"expected site+len = {exp_push:#x} ({_rel(exp_push, site)})"
            )
    return _finish(j, probs, f"`{w}` emulated correctly at {where}{note}", where)


def _desc_problems(rec: TrapRecord) -> list[str]:
    """Descriptor invariants visible at one trap (see the module docstring)."""
    d = rec.desc
    if d.vec_max is not None and d.nr_entries > d.vec_max:
        return [f"nr_entries {d.nr_entries} exceeds the array ({d.vec_max} entries)"]
    return []


def check_vector(batch: BatchRecord, symbolize: Symbolizer | None = None) -> list[str]:
    """The vector a batch writes must be sorted by site, without duplicates, within its array.

    Returns the problems found, each a sentence naming the entries (empty: all
    invariants hold).  Only the first out-of-order pair and the first duplicate
    are named, with a count of the others.
    """
    probs: list[str] = []
    n = len(batch.entries)
    if batch.vec_max is not None and n > batch.vec_max:
        probs.append(f"nr_entries {n} exceeds the array ({batch.vec_max} entries)")
    inversions = [i for i in range(1, n) if batch.entries[i].site < batch.entries[i - 1].site]
    dups = [i for i in range(1, n) if batch.entries[i].site == batch.entries[i - 1].site]
    if inversions:
        i = inversions[0]
        a, b = batch.entries[i - 1], batch.entries[i]
        more = f" (and {len(inversions) - 1} more)" if len(inversions) > 1 else ""
        probs.append(
            f"unsorted text_poke vector: entry {i} at {describe(b.site, symbolize)} follows entry "
            f"{i - 1} at {describe(a.site, symbolize)}{more}; the int3 handler's bsearch can miss "
            "live sites (the c8976ade0c1b bug, fixed by 2aebf5ee43bf)"
        )
    if dups:
        i = dups[0]
        more = f" (and {len(dups) - 1} more)" if len(dups) > 1 else ""
        probs.append(
            f"duplicate site {describe(batch.entries[i].site, symbolize)} in entries {i - 1} "
            f"and {i} of the text_poke vector{more}"
        )
    return probs


def _finish(j: Judgement, probs: list[str], ok_reason: str, where: str) -> Judgement:
    if probs:
        return replace(j, verdict="violation", reason="; ".join(probs) + f" at {where}")
    return replace(j, verdict="ok", reason=ok_reason)


def check_final_text(site_bytes: bytes, last_written: bytes) -> tuple[bool, str]:
    """After a batch: does the site hold the last instruction written (``TextPokeLoc.written``)?"""
    n = len(last_written)
    if n == 0:
        return False, "nothing was written"
    got = bytes(site_bytes[:n])
    if len(got) < n:
        return False, f"read back {len(got)} bytes, need {n}"
    if got == last_written:
        return True, f"site holds [{format_bytes(got)}]"
    if got[0] == INT3 and got[1:] == last_written[1:]:
        return (
            False,
            f"int3 left at the site: [{format_bytes(got)}], expected [{format_bytes(last_written)}]",
        )
    return False, f"site holds [{format_bytes(got)}], expected [{format_bytes(last_written)}]"


def check_in_flight(site_bytes: bytes, new: bytes, before: bytes | None,
                    old_first: int | None) -> tuple[bool, str]:
    """A site of a batch still in flight (a live descriptor's vector): may it hold these bytes now?

    The int3 protocol (arch/x86/kernel/alternative.c, ``text_poke_bp_batch`` up to 6.15,
    ``smp_text_poke_batch_finish`` 6.16+) writes int3 at the first byte, then the new tail,
    then the new first byte; so the site may hold the old text, int3 + the old tail, int3 +
    a tail being written (each byte old or new), or the new text.  ``before`` is the text
    the site held before (the previous write seen), None if this batch is the first one
    seen at the site: then the old tail is not known and only its first byte
    (``text_poke_loc.old``, ``old_first``) is.  Returns (may hold it, why).
    """
    n = len(new)
    got = bytes(site_bytes[:n])
    if len(got) < n or n == 0:
        return False, f"read back {len(got)} bytes, need {n}"
    if got == new:
        return True, "holds the new text"
    old = before if before is not None and len(before) == n else None
    first_old = old[0] if old is not None else old_first
    tail_mixed = old is not None and all(
        g in (a, b) for g, a, b in zip(got[1:], old[1:], new[1:], strict=True))
    if got[0] == INT3:
        if got[1:] == new[1:]:
            return True, "int3 + the new tail (the batch's last write is still to come)"
        if tail_mixed:
            return True, "int3 + the old tail, or a tail being written (each byte old or new)"
        if old is None:
            return True, ("int3 + a tail other than the new one; the old tail is not known "
                          "(this batch is the first write seen at the site)")
        return False, f"int3 + [{format_bytes(got[1:])}], neither the old tail nor the new one"
    if old is not None and got == old:
        return True, "still holds the old text (the batch has not written it yet)"
    if old is None and first_old is not None and got[0] == first_old:
        return True, ("still holds the old first byte; the old tail is not known "
                      "(this batch is the first write seen at the site)")
    return False, (f"site holds [{format_bytes(got)}]: not the old text, int3 + a tail, "
                   f"or the new text [{format_bytes(new)}] of the batch in flight")


def check_poke_in_flight(site_bytes: bytes, written: bytes, before: bytes | None) -> tuple[bool, str]:
    """A site a plain ``text_poke()`` was still writing when the guest stopped: each byte old or new."""
    n = len(written)
    got = bytes(site_bytes[:n])
    if got == written:
        return True, "holds the text written"
    if len(got) == n and before is not None and len(before) == n and all(
            g in (a, b) for g, a, b in zip(got, before, written, strict=True)):
        return True, "a text_poke() was still writing it: each byte is the old or the new one"
    return False, f"site holds [{format_bytes(got)}], expected [{format_bytes(written)}]"
