"""The host side of the probe on real MI transcripts captured from probed runs.

Each transcript is a whole `pokelab probe` GDB/MI session (tests/data/mi/),
recorded by MiSession: the GDB-side recorder's setup report and one raw
record per trap.  Replaying it through Probe.ingest must give the verdicts the
live run gave (noted beside each file below).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.gdb.mi import console_lines, parse_transcript
from orchestrator.gdb.probe import Probe
from orchestrator.gdb.symbols import KernelSymbolizer

DATA = Path(__file__).resolve().parent.parent / "data" / "mi"

# file: (traps judged, violations, injected) as the live run reported them
CAPTURED = {
    "probe-6.1-pass.mi.log": (80, 0, 0),
    "probe-6.12-pass.mi.log": (96, 0, 0),
    "probe-7.3-pass.mi.log": (133, 0, 0),
    "probe-6.1-wrong-target.mi.log": (73, 15, 15),
    "probe-6.1-wrong-return.mi.log": (92, 18, 18),
    "probe-6.1-skip-call.mi.log": (100, 26, 26),
    "probe-7.3-wrong-target.mi.log": (191, 10, 10),
}


def replay(name: str, tmp_path: Path) -> Probe:
    probe = Probe(Path("/nonexistent/vmlinux"), "127.0.0.1:1", tmp_path, KernelSymbolizer([]), 1.0)
    for line in console_lines(parse_transcript((DATA / name).read_text())):
        probe.ingest(line)
    return probe


@pytest.mark.parametrize("name", sorted(CAPTURED))
def test_replay_matches_live_run(name: str, tmp_path: Path) -> None:
    judged, violations, injected = CAPTURED[name]
    s = replay(name, tmp_path).summary()
    assert s["traps_judged"] == judged
    assert s["violations"] == violations
    assert s["injected"] == injected
    assert s["injected_flagged"] == injected  # every injected trap flagged ...
    assert s["false_flags"] == 0  # ... and no other
    assert s["recorder_errors"] == 0 and s["bad_records"] == 0


def test_setup_report_detects_6_1_layout(tmp_path: Path) -> None:
    probe = replay("probe-6.1-pass.mi.log", tmp_path)
    info = probe.setup_info
    assert info["handler"] == "poke_int3_handler"
    assert info["desc"] == "bp_desc"
    assert info["loc_size"] == 16
    assert info["loc_fields"]["text"] == [10, 5]
    assert len(info["exits"]) >= 1
    assert probe.layout is not None and probe.layout.regs.ip == 0x80


def test_6_12_pt_regs_cs_found_in_anonymous_union(tmp_path: Path) -> None:
    info = replay("probe-6.12-pass.mi.log", tmp_path).setup_info
    assert info["regs_fields"]["cs"] == [136, 2]
    assert info["regs_fields"]["ss"] == [160, 2]


def test_call_traps_go_to_a_trampoline_and_push_site_plus_5(tmp_path: Path) -> None:
    probe = replay("probe-6.1-pass.mi.log", tmp_path)
    import json

    calls = [json.loads(x) for x in probe.trap_log_path.read_text().splitlines()]
    calls = [c for c in calls if c.get("opcode") == "0xe8"]
    assert calls, "the capture has CALL traps"
    for c in calls:
        assert c["emulated_ip"] == c["target"]
        assert int(c["pushed"], 16) == int(c["site"], 16) + 5
        assert int(c["regs_after"]["sp"], 16) == int(c["regs_before"]["sp"], 16) - 8


def test_wrong_target_reason_names_the_2019_bug(tmp_path: Path) -> None:
    probe = replay("probe-6.1-wrong-target.mi.log", tmp_path)
    assert probe.violations
    assert all(v["injected"] == "wrong-target" for v in probe.violations)
    assert all("disagrees with the text being written" in v["reason"] for v in probe.violations)


def test_regions_learned_after_the_traps_attribute_them(tmp_path: Path) -> None:
    """Text named only at a later read-back (BPF text from bpf_kallsyms): the floor's records
    (``attributed_records``), the rewritten trap log, the batch users and the violation examples
    take the region's user.  Here with no census tables, so every site starts ``unknown``."""
    probe = replay("probe-7.3-wrong-target.mi.log", tmp_path)
    sites = sorted({int(r["site"], 16) for r in probe.attributed_records() if r.get("site")})
    assert sites and {r.get("user") for r in probe.attributed_records() if r.get("site")} == {"unknown"}
    assert probe.summary()["batch_users"] == {"unknown": 65}
    probe.census.add_region(sites[0], sites[-1] + 5 - sites[0], "bpf", "bpf_prog_x_y")
    probe.sym.add_region("bpf_prog_x_y", sites[0], sites[-1] + 5 - sites[0])
    assert {r["user"] for r in probe.attributed_records() if r.get("site")} == {"bpf"}
    probe.finish()
    s = probe.summary()
    assert s["users"] == {"bpf": s["traps_judged"]}
    assert s["batch_users"].get("bpf", 0) > 0 and sum(s["batch_users"].values()) == probe.batches == 65
    v = probe.violations[0]
    assert v["user"] == "bpf" and v["symbol"].startswith("bpf_prog_x_y+0x")
