"""The fentry site after a sealed ENDBR: 6.12's ksys_read, read back in a real run of
scenarios/examples/kprobe-read.toml, starts with gen_endbr_poison() (66 0f 1f 00), not ENDBR64;
taking its first 5 bytes for the site made a false FAIL ("holds 66 0f 1f 00 0f, expected the
5-byte NOP")."""

from __future__ import annotations

import pytest

from orchestrator.run.scenario import classify_fentry

#: (first 9 bytes of the function, offset of the site, state); the first two read on 6.12.117
CASES = [
    ("660f1f000f1f440000", 4, "nop"),      # ksys_read after 'add' (6.12: sealed ENDBR, NOP)
    ("660f1f00e8aabbccdd", 4, "call"),     # ... after 'enable'
    ("f30f1efa0f1f440000", 4, "nop"),      # ENDBR64 kept (called indirectly)
    ("0f1f40d60f1f440000", 4, "nop"),      # newer poison: nopl -42(%rax)
    ("0fb94800e811223344", 4, "call"),     # IBT_PLUS poison: ud1
    ("0f1f400090909090cc", 0, "other"),    # a plain NOP4 is no ENDBR form: the site is at +0
    ("0f1f440000f30f1efa", 0, "nop"),      # no ENDBR: the site is the function's first 5 bytes
]


@pytest.mark.parametrize("text, off, state", CASES)
def test_the_site_follows_any_endbr_form(text: str, off: int, state: str) -> None:
    assert classify_fentry(bytes.fromhex(text)) == (off, state)
