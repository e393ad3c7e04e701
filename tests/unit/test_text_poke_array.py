"""The 6.16+ layout (``text_poke_array``, per-CPU refs) on real records from Debian's 7.3.4 cloud kernel.

Both transcripts are whole `pokelab probe --kernel 7.3 --toggles 2` GDB/MI
sessions (linux-image-7.3.4+deb13-cloud-amd64, build-id 1fe9968467f2):

* ``probe-7.3-pass.mi.log``: the live run said PASS, 133 traps judged, 0 violations.
* ``probe-7.3-unsorted.mi.log``: the same run with the recorder changed for
  that capture only: at the entry of ``smp_text_poke_batch_finish()``, every
  3-entry vector (a static-key batch in ttwu_do_activate/try_to_wake_up) had
  its entries 0 and 2 swapped in guest memory before the kernel used it.  The
  kernel then ran its real bsearch on an unsorted vector: the handler declined
  ttwu_do_activate+0x92 (returned 0) on two CPUs and the guest died with
  "Oops: int3 in ttwu_do_activate".  The batch lines carry the swapped vector.

Unsorted and duplicate vectors for ``check_vector`` are also built from the
real batch record in that transcript (entries swapped or repeated here).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.core.judge import check_vector, judge
from orchestrator.core.trapdata import Layout, layout_from_setup, parse_batch_record, parse_trap_record
from orchestrator.gdb.mi import console_lines, parse_transcript
from orchestrator.gdb.probe import Probe
from orchestrator.gdb.symbols import KernelSymbolizer

DATA = Path(__file__).resolve().parent.parent / "data" / "mi"
PASS, UNSORTED = "probe-7.3-pass.mi.log", "probe-7.3-unsorted.mi.log"


def lines(name: str) -> list[str]:
    return console_lines(parse_transcript((DATA / name).read_text()))


def records(name: str, tag: str) -> list[dict[str, Any]]:
    return [json.loads(line.partition(" ")[2]) for line in lines(name) if line.startswith(tag + " ")]


def replay(name: str, tmp_path: Path) -> Probe:
    probe = Probe(Path("/nonexistent/vmlinux"), "127.0.0.1:1", tmp_path, KernelSymbolizer([]), 1.0)
    for line in lines(name):
        probe.ingest(line)
    return probe


def layout(name: str = PASS) -> Layout:
    return layout_from_setup(records(name, "POKELAB-SETUP")[0])


def test_setup_detects_text_poke_array_from_dwarf() -> None:
    info = records(PASS, "POKELAB-SETUP")[0]
    assert info["unsupported"] is None
    assert info["handler"] == "smp_text_poke_int3_handler"
    assert info["loc_type"] == "struct smp_text_poke_loc" and info["loc_size"] == 16
    assert info["desc"] == "text_poke_array"
    # vec is an inline array (4096 bytes = 256 entries), nr_entries after it
    assert info["vec_inline"] is True
    assert info["desc_fields"] == {"vec": [0, 4096], "nr_entries": [4096, 4]}
    assert info["vec_max"] == 256
    assert info["refs_percpu"] == "text_poke_array_refs"
    assert info["batch"] == "smp_text_poke_batch_finish"
    assert len(info["batch_exits"]) == 1  # the main range only, not the .cold part


def test_vcpu_to_cpu_mapping_checked_against_gs_base_and_cpu_number() -> None:
    cpus = records(PASS, "POKELAB-CPU")
    assert sorted(c["thread"] for c in cpus) == [1, 2, 3, 4]
    for c in cpus:
        assert c["cpu"] == c["thread"] - 1
        assert c["gs_base"] == c["per_cpu_offset"]  # what this_cpu_ptr() adds
        assert c["note"] is None  # cpu_number at __per_cpu_offset[vcpu] read vcpu


def test_pass_run_judged_as_live(tmp_path: Path) -> None:
    s = replay(PASS, tmp_path).summary()
    assert s["descriptor"] == "text_poke_array"
    assert s["cpu_map"] == {"1": 0, "2": 1, "3": 2, "4": 3} and s["cpu_map_notes"] == []
    assert (s["traps_judged"], s["violations"], s["batch_violations"]) == (133, 0, 0)
    assert s["batches"] == 65
    assert s["recorder_errors"] == 0 and s["bad_records"] == 0


def test_pass_run_traps_read_the_trapping_cpus_refs() -> None:
    lay = layout()
    traps = [parse_trap_record(r, lay) for r in records(PASS, "POKELAB-TRAP")]
    assert len(traps) == 133
    for t in traps:
        assert t.desc.refs >= 1 and t.desc.in_batch is True
        assert t.desc.vec_max == 256 and 1 <= t.desc.nr_entries <= 256
        assert t.ret == 1


def test_unsorted_vector_and_declined_live_site_are_named(tmp_path: Path) -> None:
    probe = replay(UNSORTED, tmp_path)
    s = probe.summary()
    assert s["batch_violations"] == 3  # three 3-entry batches were swapped
    assert s["violations"] == 5 and s["false_flags"] == 5 and s["injected"] == 0
    batch = [v for v in probe.violations if v["kind"] == "batch"]
    traps = [v for v in probe.violations if v["kind"] == "judged"]
    assert all(v["reason"].startswith("unsorted text_poke vector: entry 1 at ") for v in batch)
    assert all("c8976ade0c1b" in v["reason"] for v in batch)
    assert [v["cpu"] for v in traps] == [2, 3]
    for v in traps:
        assert v["reason"].startswith("declined live site: the handler returned 0")
        assert v["symbol"] is None or "ttwu_do_activate" in str(v["symbol"])
        assert v["site"] == "0xffffffff813aadb2" and v["ret"] == 0
    # the vector was named before the handler declined the site (and before the oops)
    assert max(v["t"] for v in batch) < min(v["t"] for v in traps)


def test_declined_trap_was_a_live_entry_with_refs_held() -> None:
    lay = layout(UNSORTED)
    bad = [r for r in records(UNSORTED, "POKELAB-TRAP") if r["ret"] == 0]
    assert len(bad) == 2
    for raw in bad:
        rec = parse_trap_record(raw, lay)
        assert rec.desc.refs == 1 and rec.desc.nr_entries == 3
        assert rec.entry is not None and rec.entry.site == rec.pre.ip - 1
        assert raw["lookup"] == "scan"  # nr <= 64: the recorder reads the whole vector
        j = judge(rec, lay)
        assert j.verdict == "violation" and j.reason.startswith("declined live site")
        assert "refs == 0" not in j.reason


def real_batch() -> dict[str, Any]:
    return next(r for r in records(PASS, "POKELAB-BATCH") if r["n"] == 3)


def test_check_vector_real_batches_hold() -> None:
    lay = layout()
    for raw in records(PASS, "POKELAB-BATCH"):
        assert check_vector(parse_batch_record(raw, lay)) == []


def test_check_vector_swapped_duplicate_and_overfull() -> None:
    lay = layout()
    raw = real_batch()
    e = [raw["entries"][i : i + 32] for i in range(0, 96, 32)]
    swapped = parse_batch_record(raw | {"entries": e[1] + e[0] + e[2]}, lay)
    probs = check_vector(swapped)
    assert len(probs) == 1 and probs[0].startswith("unsorted text_poke vector: entry 1 at ")
    dup = parse_batch_record(raw | {"entries": e[0] + e[1] + e[1]}, lay)
    assert check_vector(dup) == [
        f"duplicate site {parse_batch_record(raw, lay).entries[1].site:#x} in entries 1 and 2 "
        "of the text_poke vector"
    ]
    overfull = parse_batch_record(raw | {"vec_max": 2}, lay)
    assert check_vector(overfull) == ["nr_entries 3 exceeds the array (2 entries)"]


def test_refs_zero_outside_the_batch_is_not_ours_inside_it_is_a_violation() -> None:
    lay = layout(UNSORTED)
    raw = next(r for r in records(UNSORTED, "POKELAB-TRAP") if r["ret"] == 0)
    rec = parse_trap_record(raw, lay)
    # entries queued between add and finish, no batch running: not a text_poke trap
    idle = replace(rec, desc=replace(rec.desc, refs=0, in_batch=False))
    assert judge(idle, lay).kind == "not-text-poke"
    # during smp_text_poke_batch_finish() this CPU's refs must be held
    dropped = replace(rec, desc=replace(rec.desc, refs=0, in_batch=True))
    j = judge(dropped, lay)
    assert j.verdict == "violation" and "refs == 0 while the batch runs" in j.reason


def test_nr_entries_beyond_the_array_is_a_violation() -> None:
    lay = layout()
    raw = records(PASS, "POKELAB-TRAP")[0]
    rec = parse_trap_record(raw, lay)
    assert judge(rec, lay).verdict == "ok"
    over = replace(rec, desc=replace(rec.desc, nr_entries=257))
    j = judge(over, lay)
    assert j.verdict == "violation" and "nr_entries 257 exceeds the array (256 entries)" in j.reason
