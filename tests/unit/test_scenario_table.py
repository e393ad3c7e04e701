"""The scenario table and requirement parsing (pure: no guest)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.core.verdict import decide
from orchestrator.run.scenario import (
    Requirement,
    Scenario,
    Step,
    classify_fentry,
    guest_check_script,
    parse_kallsyms_address,
    parse_kconfig,
    parse_missing,
    parse_requirement,
    unmet_config,
    validate,
)
from orchestrator.run.scenarios_table import BY_NAME, SCENARIOS


def test_every_scenario_validates_and_names_are_unique() -> None:
    assert len(BY_NAME) == len(SCENARIOS)
    for s in SCENARIOS:
        assert validate(s) == [], s.name


def test_runnable_scenarios_have_a_floor_and_evidence() -> None:
    for s in SCENARIOS:
        if s.unsupported:
            continue
        assert s.min_traps >= 1
        assert any(st.evidence for st in s.steps), f"{s.name}: nothing shows the handler ran"


def test_unsupported_scenarios_say_why() -> None:
    for s in SCENARIOS:
        assert s.unsupported is None or len(s.unsupported) > 10, s.name


def test_ftrace_direct_needs_direct_calls_and_checks_the_call_target() -> None:
    s = BY_NAME["ftrace-direct"]
    assert s.unsupported is None
    assert Requirement("config", "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS") in s.requirements()
    assert Requirement("module", "pokelab_ops") in s.requirements()
    on = [st for st in s.steps if st.site == "call"]
    assert on and all(st.target == "pokelab_direct_tramp" and st.evidence for st in on)
    assert s.final_state.site == "nop"


def test_call_target_needs_a_call_site() -> None:
    base = BY_NAME["ftrace-function"]
    assert validate(replace(base, steps=(Step("x", "true", site="nop", target="foo"),)))
    assert validate(replace(base, steps=(Step("x", "true", site="call", target="a b"),)))
    assert validate(replace(base, steps=(Step("x", "true", site="call", target="foo"),))) == []


def test_parse_kallsyms_address() -> None:
    assert parse_kallsyms_address("ffffffffc0a01000\n") == 0xffffffffc0a01000
    assert parse_kallsyms_address("0000000000000000\n") is None  # kptr_restrict hides it
    assert parse_kallsyms_address("") is None


def test_validate_catches_bad_declarations() -> None:
    base = BY_NAME["ftrace-function"]
    assert validate(replace(base, name="Bad Name"))
    assert validate(replace(base, min_traps=0))
    assert validate(replace(base, steps=()))
    assert validate(replace(base, requires=("nonsense",)))
    assert validate(replace(base, function=None, floor_functions=()))
    assert validate(replace(base, steps=(Step("x", "true", site="jmp"),)))
    assert validate(replace(base, description="two\nlines"))


@pytest.mark.parametrize(("text", "want"), [
    ("CONFIG_KPROBES", Requirement("config", "CONFIG_KPROBES", None)),
    ("CONFIG_KPROBES=y", Requirement("config", "CONFIG_KPROBES", "y")),
    ("symbol:__do_sys_getpid", Requirement("symbol", "__do_sys_getpid")),
    ("tracefs:kprobe_events", Requirement("tracefs", "kprobe_events")),
    ("sysctl:kernel.sched_schedstats", Requirement("sysctl", "kernel.sched_schedstats")),
    ("module:pokelab_ops", Requirement("module", "pokelab_ops")),
])
def test_parse_requirement(text: str, want: Requirement) -> None:
    assert parse_requirement(text) == want
    assert str(parse_requirement(text)) == text


@pytest.mark.parametrize("text", ["", "KPROBES", "config:CONFIG_X", "symbol:", "file:/etc/x",
                                  "tracefs:../../etc/passwd", "symbol:a;rm -rf /"])
def test_parse_requirement_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_requirement(text)


def test_function_placeholder_in_requirements() -> None:
    s = replace(BY_NAME["ftrace-function"], function="foo_bar")
    assert Requirement("symbol", "foo_bar") in s.requirements()


def test_config_requirements() -> None:
    cfg = parse_kconfig("CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_S=\"x\"\n")
    assert cfg == {"CONFIG_A": "y", "CONFIG_B": "m", "CONFIG_C": "n", "CONFIG_S": "x"}
    reqs = [parse_requirement(t) for t in ("CONFIG_A", "CONFIG_B", "CONFIG_B=y", "CONFIG_C", "CONFIG_D",
                                           "symbol:x")]
    unmet = unmet_config(reqs, cfg)
    assert unmet == ["CONFIG_B is m (need y)", "CONFIG_C is not set (need y or m)",
                     "CONFIG_D is not set (need y or m)"]


def test_guest_check_script_and_its_output() -> None:
    reqs = [parse_requirement(t) for t in ("CONFIG_A", "symbol:foo", "tracefs:kprobe_events",
                                           "sysctl:kernel.x", "module:m")]
    script = guest_check_script(reqs)
    assert "CONFIG_A" not in script
    assert "/proc/kallsyms" in script and "/sys/kernel/tracing/kprobe_events" in script
    assert "/proc/sys/kernel/x" in script and "m.ko" in script
    assert guest_check_script([]) == "true"
    assert parse_missing("MISSING symbol:foo\nnoise\nMISSING module:m\n") == ["symbol:foo", "module:m"]


def test_sysfs_requirement() -> None:
    r = parse_requirement("sysfs:kernel/livepatch")
    assert (r.kind, r.name, str(r)) == ("sysfs", "kernel/livepatch", "sysfs:kernel/livepatch")
    assert "test -e /sys/kernel/livepatch" in guest_check_script([r])
    with pytest.raises(ValueError, match="odd characters"):
        parse_requirement("sysfs:../etc")


def test_body_expectations_need_watch_body() -> None:
    kopt = BY_NAME["kprobe-optimized"]
    assert kopt.watch_body and kopt.final_state.body == "original"
    assert [st.body for st in kopt.steps] == ["original", "jmp", "original", "original"]
    assert "first body instruction" in kopt.floor_what()
    bad = replace(kopt, watch_body=False)
    assert any("watch_body" in p for p in validate(bad))
    assert any("body must be one of" in p
               for p in validate(replace(kopt, steps=(Step("x", "true", body="int3"),))))


def test_unsupported_if_needs_a_guest_side_requirement_and_a_reason() -> None:
    lp = BY_NAME["livepatch"]
    assert [r for r, _ in lp.unsupported_if] == ["symbol:sched_dynamic_klp_enable"]
    assert validate(replace(lp, unsupported_if=(("CONFIG_X", "why"),)))
    assert validate(replace(lp, unsupported_if=(("symbol:x", ""),)))
    assert validate(replace(lp, unsupported_if=(("symbol:x", "why"),))) == []


def test_classify_fentry() -> None:
    assert classify_fentry(bytes.fromhex("0f1f440000") + b"\x90" * 4) == (0, "nop")
    assert classify_fentry(bytes.fromhex("f30f1efa0f1f440000")) == (4, "nop")
    assert classify_fentry(bytes.fromhex("e811223344") + b"\x90" * 4) == (0, "call")
    assert classify_fentry(bytes.fromhex("cc1f440000") + b"\x90" * 4) == (0, "other")


def test_failed_checks_make_a_fail_but_a_crash_still_wins() -> None:
    summary = {"traps_judged": 5, "violations": 0}
    out = decide(summary, crashes=[], failed_checks=["site holds x"])
    assert out.verdict == "FAIL" and out.reasons == ("site holds x",)
    assert decide(summary, crashes=["Oops: int3"], failed_checks=["x"]).verdict == "CRASH"


def test_a_violation_seen_before_an_oops_is_the_finding() -> None:
    out = decide({"traps_judged": 5, "violations": 2}, crashes=["Oops: int3 in ttwu_do_activate"])
    assert out.verdict == "FAIL"
    assert out.reasons[0] == "2 emulation violation(s)"
    assert out.reasons[-1] == "then the kernel crashed: Oops: int3 in ttwu_do_activate"


def test_too_few_traps_at_the_floor_is_inconclusive() -> None:
    summary = {"traps_judged": 5, "violations": 0}
    assert decide(summary, crashes=[], floor_count=0, min_judged=1).verdict == "INCONCLUSIVE"


def test_scenario_is_frozen() -> None:
    s = Scenario("x", "y")
    with pytest.raises(AttributeError):
        s.name = "z"  # type: ignore[misc]


def test_static_call_preempt_declares_its_read_back() -> None:
    sc = BY_NAME["static-call-preempt"]
    assert not sc.record_batches and sc.floor_keys and sc.function is None
    assert [st.name for st in sc.steps] == ["none", "voluntary", "full", "back-to-voluntary"]
    for st in sc.steps:
        assert len(st.static_calls) == 5 and st.evidence
    assert validate(replace(sc, steps=tuple(replace(st, static_calls=()) for st in sc.steps)))
    assert validate(replace(sc, floor_keys=("nobody:x",)))
    assert validate(replace(sc, steps=(replace(sc.steps[0], static_calls=(("cond_resched", "jmp"),)),)))
    assert parse_requirement("debugfs:sched/preempt") == Requirement("debugfs", "sched/preempt")
    script = guest_check_script([Requirement("debugfs", "sched/preempt")])
    assert "test -e /sys/kernel/debug/sched/preempt" in script


def test_load_cpus_and_pace() -> None:
    from orchestrator.kernels import loadgen
    from orchestrator.run.scenario import Load

    assert Load("read").cpus(4) == [1, 2, 3] and Load("read", max_cpus=1).cpus(4) == [1]
    cmd = loadgen.start_command("read", [1, 2], pace=(1, 0))
    assert "taskset -c 1 /bin/loadgen read 0 1/0 " in cmd and "taskset -c 2 " in cmd


def test_count_keys_on_captured_traps() -> None:
    import json
    from pathlib import Path

    from orchestrator.run.scenario import count_keys

    data = json.loads((Path(__file__).parents[1] / "data" / "census" / "debian-6.1.0-56.json").read_text())
    recs = data["traps"]
    want = sum(r.get("user_key") == "cond_resched" for r in recs)
    assert count_keys(recs, ["static_call:cond_resched"]) == want > 0
    assert count_keys(recs, ["jump_label"]) == sum(r["user"] == "jump_label" for r in recs) > 0
    assert count_keys(recs, ["static_call:nothing"]) == 0


def test_tracepoint_static_call_names_the_function_each_step_wants() -> None:
    sc = BY_NAME["tracepoint-static-call"]
    wants = [dict(st.static_calls)["tp_func_sys_enter"] for st in sc.steps]
    assert wants == ["func:ftrace_syscall_enter", "func:__traceiter_sys_enter",
                     "func:ftrace_syscall_enter", "func:__traceiter_sys_enter"]
    assert sc.floor_keys == ("static_call:tp_func_sys_enter",) and sc.record_batches
    bad = replace(sc.steps[0], static_calls=(("tp_func_sys_enter", "ret0:x"),))
    assert validate(replace(sc, steps=(bad,)))


def test_offers_requirement_checks_a_word_of_a_debugfs_choice_file() -> None:
    from orchestrator.run.scenario import guest_check_script, parse_requirement

    r = parse_requirement("offers:sched/preempt:none")
    assert (r.kind, r.name) == ("offers", "sched/preempt:none")
    assert "grep -qw none /sys/kernel/debug/sched/preempt" in guest_check_script([r])
    for bad in ("offers:sched/preempt", "offers::none", "offers:../x:none", "offers:sched/preempt:no ne"):
        with pytest.raises(ValueError):
            parse_requirement(bad)
