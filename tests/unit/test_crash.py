"""The crash parser on real console logs (tests/data/console/*.log, captured from real guests).

Expected (type, title) pairs live in tests/data/console/expected.json.  After a change to the
format table or a new log, regenerate it with ``.venv/bin/python tests/unit/crash_golden.py``
and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from crash_golden import DATA, EXPECTED, LOGS, parse

from orchestrator.core import crash


@pytest.mark.parametrize("log", LOGS, ids=[p.name for p in LOGS])
def test_log_titles(log: Path) -> None:
    expected = json.loads(EXPECTED.read_text())
    assert log.name in expected, f"{log.name} has no expected titles: run tests/unit/crash_golden.py"
    assert parse(log) == expected[log.name]


def test_every_expected_log_exists() -> None:
    assert set(json.loads(EXPECTED.read_text())) == {p.name for p in LOGS}


def test_clean_boots_have_no_crash() -> None:
    for p in LOGS:
        if p.name.startswith("boot-"):
            assert parse(p) == [], p.name


def test_first_title_per_kind() -> None:
    """Each captured crash log names the crash it was captured for, first."""
    want = {"panic-": "panic", "hung-task-": "hung-task", "oops-int3-": "oops-int3",
            "warning-": "warning", "soft-lockup-": "soft-lockup", "bug-": "bug", "rcu-stall-": "rcu-stall"}
    for p in LOGS:
        for prefix, kind in want.items():
            if p.name.startswith(prefix):
                titles = parse(p)
                assert titles and titles[0][0] == kind, (p.name, titles)


@pytest.mark.parametrize("line, expected", [
    ("[   12.345678] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI", ("oops-int3", "Oops: int3")),
    ("[    1.0] BUG: kernel NULL pointer dereference, address: 0000000000000008",
     ("bug", "BUG: kernel NULL pointer dereference")),
    ("[    3.2] general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP",
     ("gpf", "general protection fault")),
    ("[   50.1] watchdog: BUG: soft lockup - CPU#2 stuck for 22s! [loadgen:140]",
     ("soft-lockup", "BUG: soft lockup")),
    ("[    9.9] WARNING: CPU: 1 PID: 77 at kernel/trace/ftrace.c:2185 ftrace_bug+0x1/0x2",
     ("warning", "WARNING in ftrace_bug")),
    ("[   70.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
     ("rcu-stall", "INFO: rcu_preempt detected stall")),
    ("[    8.0] INFO: task sh:130 blocked for more than 1 seconds.",
     ("hung-task", "INFO: task hung: sh")),
    ("[    7.2] INFO: task kworker/3:1:56 blocked for more than 1 seconds.",
     ("hung-task", "INFO: task hung: kworker")),
    ("[   15.2] int3: 0000 [#1] PREEMPT SMP NOPTI", ("oops-int3", "Oops: int3")),
    ("[   15.2] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", ("oops", "Oops: invalid opcode")),
    ("[    4.4] Kernel panic - not syncing: sysrq triggered crash",
     ("panic", "Kernel panic - not syncing: sysrq triggered crash")),
    ("[    4.4] kernel BUG at arch/x86/kernel/alternative.c:1234!",
     ("kernel-bug", "kernel BUG at arch/x86/kernel/alternative.c:1234")),
    ("[    1.0] ftrace: allocating 35812 entries in 140 pages", None),
])
def test_classify_lines(line: str, expected: tuple[str, str] | None) -> None:
    assert crash.classify(line) == expected


def test_int3_oops_after_a_warning_on_61() -> None:
    """6.1 prints the int3 die() line without "Oops: ": still an int3 oops, at the patched function."""
    titles = parse(DATA / "warning-ftrace-bug-then-int3-6.1.log")
    assert ["oops-int3", "Oops: int3 in __x64_sys_newuname"] in titles
    assert titles[0] == ["warning", "WARNING in ftrace_verify_code"]


def test_rip_from_the_report() -> None:
    lines = ["[ 5.0] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI", "[ 5.0] CPU: 1 PID: 9 Comm: x",
             "[ 5.0] RIP: 0010:write_null+0x1/0x10", "[ 5.1] Kernel panic - not syncing: Fatal exception"]
    assert [(c.type, c.title) for c in crash.scan(lines)] == [
        ("oops-int3", "Oops: int3 in write_null"), ("panic", "Kernel panic - not syncing: Fatal exception")]


def test_user_rip_is_not_the_crash_site() -> None:
    assert crash.classify("BUG: unable to handle page fault for address: ffff8880", ["RIP: 0033:0x47b7a0"]) \
        == ("bug", "BUG: unable to handle page fault for address")


def test_second_banner_is_a_reboot() -> None:
    lines = ["[    0.000000] Linux version 6.1.0 (x)", "ok", "[    0.000000] Linux version 6.1.0 (x)"]
    assert [(c.type, c.line) for c in crash.scan(lines)] == [("reboot", 2)]
