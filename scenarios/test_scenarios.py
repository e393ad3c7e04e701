"""Every scenario on every kernel (``--pokelab-kernel``, default 6.1 and 6.12), with the probe attached.

One boot per scenario and kernel.  PASS is required; UNSUPPORTED is a visible skip.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.jobs.pytest_plugin import expect_pass, kernels
from orchestrator.run.scenarios_table import BY_NAME, SCENARIOS

pytestmark = pytest.mark.vm


#: scenarios that take minutes a kernel here (3-7 min under load): by default they run on the first
#: kernel only, so that `make test` stays within its 30 minutes; --pokelab-kernel names them all
HEAVY = {"ftrace-function-all"}


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_scenario(name: str, pokelab_kernel: str, run_scenario, request) -> None:  # type: ignore[no-untyped-def]
    chosen = request.config.getoption("--pokelab-kernel")
    if name in HEAVY and not chosen and pokelab_kernel != kernels(request.config)[0]:
        pytest.skip(f"{name} runs on {kernels(request.config)[0]} only by default (minutes a kernel); "
                    f"--pokelab-kernel {pokelab_kernel} runs it here")
    out = run_scenario(BY_NAME[name], pokelab_kernel)
    expect_pass(out)
    assert out["traps_judged"] > 0 and out["violations"] == 0
    assert out["floor_traps"] >= BY_NAME[name].min_traps
    assert all(n > 0 for n in out["evidence"].values()), out["evidence"]
    if BY_NAME[name].budget.batches_per_burst:
        # heavy patching: the budget acted, and the verdict says traps were let through
        b = out["budget"]
        assert b and (b["batches_cut"] or b["bursts_cut"]), b
        assert "let through" in out["reasons"][0], out["reasons"]
        assert isinstance(out["watchdogs"], Mapping) and out["watchdogs"]["rcu_cpu_stall_timeout_s"] > 21
        assert not out.get("crashes"), out.get("crashes")
    # the census: every judged trap has a user, and the scenario's own user is among them
    assert sum(out["users"].values()) == out["traps_judged"], out["users"]
    assert EXPECTED_USER.get(name, "ftrace") in out["users"], out["users"]


#: the text_poke user each scenario's watched sites belong to (default: ftrace)
EXPECTED_USER = {"static-key-schedstats": "jump_label", "static-call-preempt": "static_call",
                 "tracepoint-static-call": "static_call", "kprobe-ftrace": "kprobe",
                 "kprobe-optimized": "kprobe", "livepatch": "livepatch", "bpf-tailcall": "bpf"}


@pytest.mark.parametrize("name", ["static-call-preempt", "tracepoint-static-call"])
def test_static_call_injection_flags_every_injected_trap(name: str, run_scenario) -> None:  # type: ignore[no-untyped-def]
    # wrong-target on static-call CALL entries: the xor5rax (return0) form, CALL retargets
    out = run_scenario(BY_NAME[name], "6.1", inject="wrong-target")
    assert out["verdict"] == "FAIL", out.get("reasons")
    assert out["injected_flagged"] == out["injected"] > 0 and out["false_flags"] == 0
    # wrong-target also corrupts JMP32 entries that are not NOPs (the tracepoint's jump labels)
    users = {v.get("user") for v in out["violation_examples"]}
    assert "static_call" in users and users <= {"static_call", "jump_label"}, users


def test_injection_ends_fail_with_the_violation(run_scenario) -> None:  # type: ignore[no-untyped-def]
    out = run_scenario(replace(BY_NAME["ftrace-function"], repeat=2), "6.1", inject="wrong-target")
    assert out["verdict"] == "FAIL", out.get("reasons")
    assert out["violations"] > 0 and out["injected_flagged"] == out["injected"] > 0
    assert out["false_flags"] == 0
    # the CALLs the tracer writes are emulated to ftrace_stub; wrong-target also sends the jump
    # labels' JMP32 entries (the tracer's static keys in __schedule) back to their own site
    calls = [v for v in out["violation_examples"] if v.get("opcode") == "0xe8"]
    assert calls, out["violation_examples"]
    v = calls[0]
    assert v["verdict"] == "violation" and "ftrace_stub" in (v.get("emulated_name") or ""), v
    assert any("violation" in r for r in out["reasons"])


def test_trigger_that_does_nothing_is_inconclusive(run_scenario) -> None:  # type: ignore[no-untyped-def]
    # a traceable function the getpid load never calls: its site is patched, never trapped
    sc = replace(BY_NAME["ftrace-function"], function="__x64_sys_sethostname", repeat=1)
    out = run_scenario(sc, "6.1")
    assert out["verdict"] == "INCONCLUSIVE", out.get("reasons")
    assert out["floor_traps"] == 0
    assert "floor" in out["reasons"][0]


def test_user_workload_runs_as_the_load(run_scenario, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a user's static binary, copied in over SSH and pinned on vCPUs 1..: here loadgen itself
    # (with no arguments it spins in getpid until killed)
    from orchestrator.host.cache import cache_dir
    from orchestrator.kernels.loadgen import ensure_loadgen

    out = run_scenario(replace(BY_NAME["ftrace-function"], repeat=1), "6.1",
                       workload=ensure_loadgen(cache_dir()))
    assert out["verdict"] == "PASS", out.get("reasons")
    assert out["load"]["still_running_at_end"] == len(out["load"]["cpus"])
    assert out["floor_traps"] >= 1


@pytest.mark.parametrize("name", ["kprobe-optimized", "livepatch"])
def test_injection_into_other_text_poke_users_ends_fail(name: str, run_scenario) -> None:  # type: ignore[no-untyped-def]
    # kprobe-optimized: the JMP32 detour's traps jump back to the site; livepatch: the CALL to
    # the livepatch ops' trampoline goes to ftrace_stub instead (the old body runs)
    out = run_scenario(BY_NAME[name], "6.1", inject="wrong-target")
    assert out["verdict"] == "FAIL", out.get("reasons")
    assert out["violations"] > 0 and out["injected_flagged"] == out["injected"] > 0
    if name == "livepatch":
        assert out["false_flags"] == 0
        return
    # kprobe-optimized, a known gap in the recorder's attribution (1 run in 4 here): the wrong
    # JMP32 jumps back to the site, which traps again, and such a re-trap can read the corrupted
    # text_poke_loc (on the optimizer's stack) without being counted as injected.  What must hold:
    # every flag the injection did not account for is at a site where this run injected.
    traps = [json.loads(x) for x in Path(out["trap_log"]).read_text().splitlines() if x.strip()]
    injected_sites = {t.get("site") for t in traps if t.get("injected")}
    stray = [t for t in traps if t.get("verdict") == "violation" and not t.get("injected")]
    assert len(stray) == out["false_flags"]
    assert all(t.get("site") in injected_sites for t in stray), stray[:3]
