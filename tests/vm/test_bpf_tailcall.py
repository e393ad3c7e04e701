"""The bpf-tailcall scenario on real guests: the x86 BPF JIT's direct tail call rewritten live
(kernel/bpf/arraymap.c prog_array_map_poke_run -> bpf_arch_poke_desc_update -> __bpf_arch_text_poke:
text_poke_bp() on 6.1 and 6.12, smp_text_poke_single() on 6.16+).  Real QEMU, real GDB, real
kernels (slow: about 15 s each here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

POKELAB = [sys.executable, "-m", "orchestrator.cli"]


def repro(tmp_path: Path, *args: str, scenario: str = "bpf-tailcall") -> tuple[int, dict]:
    out = tmp_path / "v.json"
    res = subprocess.run([*POKELAB, "repro", scenario, "--artifacts", str(tmp_path / "art"),
                          "--json", str(out), *args], capture_output=True, text=True, timeout=600,
                         check=False)
    assert "Traceback" not in res.stderr, res.stderr
    assert out.is_file(), res.stdout + res.stderr
    return res.returncode, json.loads(out.read_text())


@pytest.mark.parametrize("kernel", ["6.1", "7.3"])
def test_tail_call_flips_are_judged_at_bpf_sites_and_pass(tmp_path: Path, kernel: str) -> None:
    rc, v = repro(tmp_path, "--kernel", kernel)
    assert v["verdict"] == "PASS", v.get("reasons")
    assert rc == 0
    assert v["kernel"].startswith(kernel + ".")
    # every judged trap is at a tail-call site of the JITed program, named from bpf_kallsyms
    assert v["floor_traps"] == v["traps_judged"] > 0 and v["users"] == {"bpf": v["traps_judged"]}
    assert v["violations"] == 0 and v["opcodes"] == {"0xe9": v["traps_judged"]}
    traps = [json.loads(x) for x in Path(v["trap_log"]).read_text().splitlines() if '"judged"' in x]
    assert traps and all(t["symbol"].startswith("bpf_prog_") and "_pokelab_tc" in t["symbol"] for t in traps)
    # the patched code ran: the tail-call target counted its runs (two cycles of 40 flips)
    assert v["evidence"]["flip"] > 0
    assert [s.get("evidence") for s in v["steps"] if s["step"] == "flip"] != [0, 0]
    # the sites were read back while the program was loaded, and matched
    assert v["text_checks"] > 0 and v["text_mismatches"] == 0


def test_wrong_target_at_bpf_sites_fails(tmp_path: Path) -> None:
    rc, v = repro(tmp_path, "--kernel", "6.1", "--inject", "wrong-target")
    assert v["verdict"] == "FAIL", v.get("reasons")
    assert rc == 1
    assert v["injected"] > 0 and v["injected_flagged"] == v["injected"] == v["violations"]
    assert v["false_flags"] == 0
    assert v["violation_examples"][0]["user"] == "bpf"


def test_with_constant_blinding_nothing_is_judged_and_the_run_is_inconclusive(tmp_path: Path) -> None:
    """bpf_jit_harden=2 blinds constants: the verifier adds no poke descriptor (the tail call stays
    indirect, the target still runs) and no BPF text is patched: nothing proven, never a PASS."""
    from orchestrator.run.scenario_file import to_toml
    from orchestrator.run.scenarios_table import BY_NAME

    text = to_toml(BY_NAME["bpf-tailcall"])
    assert "echo 0 > /proc/sys/net/core/bpf_jit_harden" in text
    path = tmp_path / "blinded.toml"
    path.write_text(text.replace("echo 0 > /proc/sys/net/core/bpf_jit_harden",
                                 "echo 2 > /proc/sys/net/core/bpf_jit_harden")
                    .replace('name = "bpf-tailcall"', 'name = "bpf-tailcall-blinded"'))
    rc, v = repro(tmp_path, "--kernel", "6.1", scenario=str(path))
    assert v["verdict"] == "INCONCLUSIVE", (v.get("reasons"), v.get("steps"))
    assert rc == 2
    assert v["floor_traps"] == 0 and v["evidence"]["flip"] > 0, (v.get("users"), v.get("steps"))
