"""A scenario's checks do not depend on what the load is (issue 12, item 4).

``--workload FILE`` replaces the scenario's load; evidence that looked at the
load (``/proc/$(pidof loadgen)/sched``) read 0 with a user's load and FAILed a
run whose 2,146 judged traps held 0 violations.  Evidence is now system-wide or
calls the watched function itself (``{call}``); a check that cannot be made is
INCONCLUSIVE with its reason.
"""

from __future__ import annotations

from dataclasses import replace

from orchestrator.core.verdict import decide
from orchestrator.run.scenario import (
    CALLERS,
    Scenario,
    Step,
    parse_workload_states,
    validate,
    workload_start_command,
)
from orchestrator.run.scenario_body import ScenarioBody as _ScenarioBody
from orchestrator.run.scenarios_table import BY_NAME, SCENARIOS

#: system-wide kernel state: schedstat counters; the PREEMPT_DYNAMIC mode (static-call-preempt);
#: or what the step's own driver printed (bpf-tailcall: its loader's count of the target program's
#: runs, from the programs it loaded and ran itself, whatever the load is)
SYSTEM_WIDE = ("/proc/schedstat", "/sys/kernel/debug/sched/preempt", "/tmp/bpf-tailcall.out")


def test_no_evidence_looks_at_the_load() -> None:
    for sc in SCENARIOS:
        for st in (*sc.setup, *sc.steps, *sc.teardown):
            if not st.evidence:
                continue
            ev = str(st.evidence)
            assert "pidof" not in ev and "loadgen" not in ev, f"{sc.name}/{st.name}: {ev}"
            assert "{call}" in ev or any(w in ev for w in SYSTEM_WIDE), (
                f"{sc.name}/{st.name}: evidence neither calls the function nor counts system-wide")


def test_call_expands_to_pokelab_s_own_caller_or_nothing() -> None:
    sc = BY_NAME["ftrace-function"]
    assert sc.expand("{call}; x") == CALLERS["__do_sys_getpid"] + "; x"
    assert "getpid" in CALLERS["__do_sys_getpid"] and "/dev/null" in CALLERS["__do_sys_getpid"]
    assert replace(sc, function="__x64_sys_sethostname").expand("{call}; x") == "true; x"


def test_call_without_a_function_does_not_validate() -> None:
    sc = Scenario("x", "y", function=None, floor_functions=("f",),
                  steps=(Step("s", "true", evidence="{call}; echo 1"),))
    assert any("{call}" in p for p in validate(sc))


def body(function: str | None, evidence: dict[str, int], missing: dict[str, str] | None = None,
         step_evidence: str = "{call}; grep -c x trace") -> _ScenarioBody:
    b = _ScenarioBody(replace(BY_NAME["ftrace-function"], function=function), None, {})
    b.evidence = dict(evidence)
    b.evidence_missing = dict(missing or {})
    b.evidence_steps = {name: Step(name, "true", evidence=step_evidence) for name in evidence}
    return b


def test_evidence_zero_with_pokelab_s_own_call_is_a_fail() -> None:
    b = body("__do_sys_getpid", {"tracer-on": 0})
    b._judge_evidence(floor=12)
    assert b.unknown == [] and len(b.failed) == 1 and "recorded nothing" in b.failed[0]


def test_evidence_zero_for_a_function_pokelab_cannot_call_is_inconclusive() -> None:
    b = body("__x64_sys_sethostname", {"tracer-on": 0})
    b._judge_evidence(floor=12)
    assert b.failed == [] and "no command that calls __x64_sys_sethostname" in b.unknown[0]


def test_system_wide_evidence_zero_is_a_fail_whatever_the_function() -> None:
    b = body("__x64_sys_sethostname", {"schedstats-on": 0}, step_evidence="cat /proc/schedstat")
    b._judge_evidence(floor=3)
    assert b.unknown == [] and len(b.failed) == 1


def test_evidence_that_printed_no_number_is_inconclusive() -> None:
    """The old static-key evidence with a user's load: awk on /proc//sched printed nothing."""
    why = "printed no count, exit 2: awk: /proc//sched: No such file or directory"
    b = body("__do_sys_getpid", {"schedstats-on": 0}, {"schedstats-on": why})
    b._judge_evidence(floor=2146)
    assert b.failed == [] and b.unknown == [f"step 'schedstats-on': its evidence could not be read ({why})"]


def test_positive_evidence_passes() -> None:
    b = body("__x64_sys_sethostname", {"tracer-on": 7})
    b._judge_evidence(floor=1)
    assert b.failed == b.unknown == []


def test_unknown_checks_are_inconclusive_but_a_fail_still_wins() -> None:
    summary = {"traps_judged": 2146, "violations": 0}
    out = decide(summary, crashes=[], unknown_checks=["step 'x': evidence could not be read"])
    assert out.verdict == "INCONCLUSIVE" and out.reasons == ("step 'x': evidence could not be read",)
    assert decide(summary, crashes=[], failed_checks=["f"], unknown_checks=["u"]).verdict == "FAIL"
    assert decide(summary, crashes=[]).verdict == "PASS"


def test_workload_states() -> None:
    text = "workload cpu=1 running\nworkload cpu=2 exit=0\nworkload cpu=3 exit=127\nworkload cpu=4 exit=?\n"
    assert parse_workload_states(text) == {1: "running", 2: "exit 0", 3: "exit 127", 4: "exit ?"}
    assert parse_workload_states("") == {}
    cmd = workload_start_command([1, 2])
    assert "taskset -c 1 " in cmd and "taskset -c 2 " in cmd and "chmod +x" in cmd
    assert cmd.count("> /dev/null 2>&1 &") == 2  # nothing holds the SSH channel open
