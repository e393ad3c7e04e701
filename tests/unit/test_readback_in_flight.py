"""The read-back while a write is in flight, and writes outside an int3 batch (issue 12, item 1).

Seen live on 6.1 (kprobes made optimizable, then disabled and removed while
ftrace-function ran):

* FAIL "int3 left at the site" for ``__SCT__tp_func_sched_switch+0x0`` (read
  ``cc 53 9b 2c ff``, expected ``e9 53 9b 2c ff``): the guest was paused while
  another CPU ran the batch; int3 + a tail is what a live site may hold.
* FAIL "other text than the last one written" at a kprobe site that read
  ``cc 8b 57 70 83`` after the last batch wrote a JMP32 there: unoptimizing
  writes the site with plain ``text_poke()`` (int3, then the copied tail).

The probe runs against fakegdb.py (MI records from a real 6.1 session; memory
and the recorder's replies scripted per stop); its layout is the real
``POKELAB-SETUP`` record of that session (``struct text_poke_loc``, 16 bytes).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from test_probe_freed_text import OPS_EMPTY, STEXT, probe_on

from orchestrator.core.judge import check_in_flight, check_poke_in_flight
from orchestrator.core.trapdata import layout_from_setup
from orchestrator.gdb.ledger import SiteState
from orchestrator.gdb.mi import console_lines, parse_transcript
from orchestrator.gdb.probe import Probe
from orchestrator.gdb.readback import in_flight_from_report

CAPTURE = Path(__file__).resolve().parent.parent / "data" / "mi" / "probe-6.1-pass.mi.log"
SCT = 0xFFFFFFFF810B0F40  # a core-text site (the static call trampoline of the issue)
KPROBE = 0xFFFFFFFF810B1005  # __x64_sys_sched_get_priority_min+5 stand-in: an optimized kprobe
NEW = bytes.fromhex("e9539b2cff")  # the batch's JMP32 at the trampoline
BEFORE = bytes.fromhex("c3cccccccc")  # what it held before (ret: the static call had no target)


def setup_line() -> str:
    lines = console_lines(parse_transcript(CAPTURE.read_text()))
    return next(ln for ln in lines if ln.startswith("POKELAB-SETUP "))


def loc(site: int, text: bytes, old: int) -> bytes:
    """One 6.1 ``struct text_poke_loc`` (rel_addr, disp, len, opcode, text[5], old)."""
    disp = struct.unpack("<i", text[1:5])[0] if text[0] in (0xE8, 0xE9) else 0
    return struct.pack("<iiBB5sB", site - STEXT, disp, len(text), text[0], text.ljust(5, b"\0"), old)


def inflight(live: list[bytes] | None, pending: list[list[int]] | None = None) -> str:
    rep: dict[str, Any] = {"live": bool(live), "pending": pending or [], "refs": [1 if live else 0]}
    if live:
        rep.update({"n": len(live), "entries": b"".join(live).hex()})
    return "POKELAB-INFLIGHT " + json.dumps(rep)


def ready(tmp_path: Path, phases: list[dict[str, Any]]) -> Probe:
    probe = probe_on(tmp_path, phases=phases)
    probe.ingest(setup_line())
    assert probe.layout is not None
    return probe


def phase(memory: dict[int, bytes], report: str) -> dict[str, Any]:
    return {"memory": {f"{a:x}": b.hex() for a, b in memory.items()},
            "console": {"python pokelab_ops()": [OPS_EMPTY], "python pokelab_inflight()": [report]}}


# -- the rules ---------------------------------------------------------------------------------

def test_states_a_live_site_may_hold() -> None:
    ok = [NEW, BEFORE, b"\xcc" + BEFORE[1:], b"\xcc" + NEW[1:],
          b"\xcc" + NEW[1:3] + BEFORE[3:]]  # a tail half-written
    for now in ok:
        assert check_in_flight(now, NEW, BEFORE, 0xC3)[0], now.hex()
    bad = [bytes.fromhex("cc00000000"), bytes.fromhex("9090909090"), NEW[:1] + BEFORE[1:],
           bytes.fromhex("e9539b2c")]
    for now in bad:
        assert not check_in_flight(now, NEW, BEFORE, 0xC3)[0], now.hex()


def test_first_write_seen_old_tail_unknown_is_said() -> None:
    ok, why = check_in_flight(bytes.fromhex("c3aaaaaaaa"), NEW, None, 0xC3)
    assert ok and "old tail is not known" in why
    assert not check_in_flight(bytes.fromhex("90aaaaaaaa"), NEW, None, 0xC3)[0]


def test_a_plain_write_in_flight_holds_old_or_new_bytes() -> None:
    assert check_poke_in_flight(BEFORE, NEW, BEFORE)[0]
    assert check_poke_in_flight(b"\xcc" + BEFORE[1:], b"\xcc" + BEFORE[1:], NEW)[0]
    assert not check_poke_in_flight(bytes.fromhex("0000000000"), NEW, BEFORE)[0]
    assert not check_poke_in_flight(BEFORE, NEW, None)[0]


def test_malformed_report_is_nothing_in_flight() -> None:
    layout = layout_from_setup(json.loads(setup_line().partition(" ")[2]))
    assert in_flight_from_report({"live": True, "n": 2, "entries": "00"}, layout) == ({}, [])
    assert in_flight_from_report({"pending": [["x"], [1, 2]]}, layout) == ({}, [(1, 2)])


# -- (a) paused in the middle of a batch ---------------------------------------------------------

def test_issue_instance_int3_on_a_live_site_is_in_flight_then_checked(tmp_path: Path) -> None:
    mid = phase({SCT: b"\xcc" + NEW[1:]}, inflight([loc(SCT, NEW, 0xC3)]))
    done = phase({SCT: NEW}, inflight(None))
    probe = ready(tmp_path, [mid, done])
    try:
        probe.sites[SCT] = SiteState(NEW, "__SCT__tp_func_sched_switch+0x0", 1, before=BEFORE)
        probe.dirty_sites.add(SCT)
        assert probe.check_sites() == []
        s = probe.summary()
        assert s["text_in_flight"] == 1 and s["text_mismatches"] == 0
        assert "in flight" in probe.in_flight_sites[0]["reason"]
        assert "int3 + the new tail" in probe.in_flight_sites[0]["reason"]
        assert SCT in probe.dirty_sites  # read again at the next check
        assert [(c.site, c.ok) for c in probe.check_sites()] == [(SCT, True)]
    finally:
        probe.close()


def test_wrong_text_on_a_live_site_is_still_a_mismatch(tmp_path: Path) -> None:
    probe = ready(tmp_path, [phase({SCT: bytes.fromhex("cc00000000")}, inflight([loc(SCT, NEW, 0xC3)]))])
    try:
        probe.sites[SCT] = SiteState(NEW, "__SCT__tp_func_sched_switch+0x0", 1, before=BEFORE)
        probe.dirty_sites.add(SCT)
        checks = probe.check_sites()
        assert [(c.site, c.ok) for c in checks] == [(SCT, False)]
        assert probe.summary()["text_in_flight"] == 0
    finally:
        probe.close()


def test_int3_with_no_batch_in_flight_is_still_int3_left(tmp_path: Path) -> None:
    probe = ready(tmp_path, [phase({SCT: b"\xcc" + NEW[1:]}, inflight(None))])
    try:
        probe.sites[SCT] = SiteState(NEW, "__SCT__tp_func_sched_switch+0x0", 1, before=BEFORE)
        probe.dirty_sites.add(SCT)
        checks = probe.check_sites()
        assert [c.ok for c in checks] == [False] and "int3 left at the site" in checks[0].reason
    finally:
        probe.close()


# -- (b) plain text_poke() outside a batch -----------------------------------------------------

JMP32 = bytes.fromhex("e9aabbccdd")  # the optimizer's detour, written by the last batch
ARMED = bytes.fromhex("cc8b577083")  # the issue's read: int3 + the copied tail (kprobe armed)


def poke(addr: int, data: bytes, length: int | None = None) -> str:
    return "POKELAB-POKE " + json.dumps({"addr": addr, "len": len(data) if length is None else length,
                                         "data": data.hex(), "t": 1.0})


def test_issue_instance_unoptimized_kprobe_is_what_was_written(tmp_path: Path) -> None:
    """arch_unoptimize_kprobe(): text_poke(addr, int3, 1); text_poke(addr + 1, copied tail, 4)."""
    probe = ready(tmp_path, [phase({KPROBE: ARMED}, inflight(None))])
    try:
        probe.sites[KPROBE] = SiteState(JMP32, "__x64_sys_sched_get_priority_min+0x5", 0)
        probe.ingest(poke(KPROBE, b"\xcc"))
        probe.ingest(poke(KPROBE + 1, ARMED[1:]))
        assert probe.sites[KPROBE].written == ARMED and probe.sites[KPROBE].by == "poke"
        assert probe.sites[KPROBE].before == b"\xcc" + JMP32[1:]
        assert [(c.site, c.ok) for c in probe.check_sites()] == [(KPROBE, True)]
        s = probe.summary()
        assert s["text_pokes"] == 2 and s["text_poked_sites"] == 2 and s["text_mismatches"] == 0
    finally:
        probe.close()


def test_site_not_rewritten_as_reported_is_still_a_mismatch(tmp_path: Path) -> None:
    probe = ready(tmp_path, [phase({KPROBE: JMP32}, inflight(None))])
    try:
        probe.sites[KPROBE] = SiteState(JMP32, "__x64_sys_sched_get_priority_min+0x5", 0)
        probe.ingest(poke(KPROBE, b"\xcc"))
        checks = probe.check_sites()
        assert [c.ok for c in checks] == [False]  # the int3 write was reported: JMP32 is wrong now
    finally:
        probe.close()


def test_plain_write_still_running_is_in_flight(tmp_path: Path) -> None:
    probe = ready(tmp_path, [phase({KPROBE: JMP32}, inflight(None, [[KPROBE, 1]]))])
    try:
        probe.sites[KPROBE] = SiteState(JMP32, "__x64_sys_sched_get_priority_min+0x5", 0)
        probe.ingest(poke(KPROBE, b"\xcc"))
        assert probe.check_sites() == []
        assert probe.summary()["text_in_flight"] == 1
        assert "still writing" in probe.in_flight_sites[0]["reason"]
    finally:
        probe.close()


def test_write_longer_than_reported_makes_the_site_unknown(tmp_path: Path) -> None:
    probe = ready(tmp_path, [phase({}, inflight(None))])
    try:
        probe.sites[KPROBE] = SiteState(JMP32, "x", 0)
        probe.dirty_sites.add(KPROBE)
        probe.ingest(poke(KPROBE - 100, b"\x90" * 64, length=4096))  # a text_poke_copy()
        assert KPROBE not in probe.sites and probe.check_sites() == []
        assert probe.summary()["text_poke_unknown"] == 1
        assert "longer than the 64 bytes reported" in probe.poke_unknown[0]["reason"]
    finally:
        probe.close()


def test_unrelated_write_leaves_sites_alone(tmp_path: Path) -> None:
    probe = ready(tmp_path, [phase({}, inflight(None))])
    try:
        probe.sites[KPROBE] = SiteState(JMP32, "x", 0)
        probe.ingest(poke(KPROBE + 5, b"\xcc"))
        probe.ingest(poke(KPROBE - 5, b"\xcc" * 5))
        assert probe.sites[KPROBE].written == JMP32 and not probe.dirty_sites
    finally:
        probe.close()
