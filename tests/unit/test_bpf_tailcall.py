"""The bpf-tailcall scenario's host-side pieces: its declaration, the loader's command line and the
evidence parsed from the loader's line (real gcc and sh; the guest part is tests/vm/test_bpf_tailcall.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from orchestrator.kernels import loadgen
from orchestrator.run import scenarios_table as table
from orchestrator.run.scenario import parse_requirement, validate

#: a loader's line (its printf in images/loadgen/loadgen.c; target_runs as a 6.1.0-57 guest's first cycle
#: counted, the rest made up)
LINE = "bpf-tailcall flips=40 target_runs=52443 filter_runs=171706 children=3 jited=78,94"


def test_declared_by_symbols_and_config_counted_at_bpf_sites() -> None:
    sc = table.BY_NAME["bpf-tailcall"]
    assert validate(sc) == [] and sc.unsupported is None
    assert sc.floor_keys == ("bpf",) and sc.function is None
    kinds = {parse_requirement(r).kind for r in sc.requires}
    assert kinds == {"config", "symbol", "sysctl"}  # what the kernel has, never its version
    assert "symbol:prog_array_map_poke_run" in sc.requires
    assert [st.name for st in sc.steps] == ["flip", "unload"]


def test_evidence_is_the_target_programs_run_count(tmp_path: Path) -> None:
    out = tmp_path / "bpf-tailcall.out"
    out.write_text("some noise\n" + LINE + "\n")
    cmd = table.BPF_TARGET_RUNS.replace(table.BPF_OUT, str(out))
    assert subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip() == "52443"
    out.write_text("loadgen: bpf(BPF_PROG_LOAD pokelab_tc): Invalid argument; verifier log: ...\n")
    assert subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True,
                          timeout=10).stdout == ""  # no number: INCONCLUSIVE, not 0


def test_loader_bad_arguments_are_one_line_and_exit_2(tmp_path: Path) -> None:
    binary = loadgen.ensure_loadgen(tmp_path)
    for args in ([], ["0", "1000"], ["5"], ["5", "-1"], ["5", "1000", "-1"]):
        res = subprocess.run([str(binary), "bpf-tailcall", *args], capture_output=True, text=True,
                             timeout=10, check=False)
        assert res.returncode == 2, (args, res)
        assert res.stdout == "" and res.stderr.count("\n") == 1 and "usage" in res.stderr
    assert f"{loadgen.GUEST_PATH} bpf-tailcall {table.BPF_ROUNDS} {table.BPF_PACE_US} " in table.BPF_FLIP
