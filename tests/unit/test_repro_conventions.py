"""Conventions users expect (issue 12 item 8): exit codes for ``git bisect run``, KTAP on
stdout, and an interrupted run's verdict JSON; and the pieces of ``--trigger`` (item 7) that
need no VM."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import pytest

from orchestrator import cli
from orchestrator.cli import commands
from orchestrator.cli.parser import build_parser
from orchestrator.core.errors import RunInterrupted, UsageError
from orchestrator.core.verdict import (
    BISECT_EXIT_CODES,
    BISECT_USAGE_EXIT,
    EXIT_CODES,
    exit_status,
    interrupted_outcome,
)
from orchestrator.jobs import repro
from orchestrator.kernels.images import KernelArtifacts
from orchestrator.machine.vm import VmSpec
from orchestrator.run import probe_run, trigger
from orchestrator.run.execute import execute
from orchestrator.run.prepare import Prepared
from orchestrator.run.request import RunRequest
from orchestrator.run.result import RunResult
from orchestrator.run.scenarios_table import BY_NAME

ROOT = Path(__file__).resolve().parents[2]
#: the verdicts of one run (decide, run_probed's errors); EXIT_CODES also has USAGE and matrix rows
VERDICTS = ("PASS", "FAIL", "CRASH", "BOOT_FAIL", "INFRA", "UNSUPPORTED", "INCONCLUSIVE")
TRIGGERS = ROOT / "scenarios" / "triggers"


# --------------------------------------------------------------------------- exit codes


def test_exit_status_without_and_with_the_bisect_flag() -> None:
    for v in (*VERDICTS, "USAGE"):
        assert exit_status(v) == EXIT_CODES[v]
    for v in VERDICTS:
        assert exit_status(v, bisect=True) == BISECT_EXIT_CODES[v]
    # git bisect run: 1-127 but 125 is bad, 125 skips, >127 aborts
    assert exit_status("USAGE", bisect=True) == BISECT_USAGE_EXIT > 127
    assert {v for v in VERDICTS if exit_status(v, bisect=True) not in (0, 125)} == {"FAIL", "CRASH"}


@pytest.mark.parametrize("argv", [["repro", "--bisect-exit-codes", "--nope"],
                                  ["repro", "--bisect-exit-codes"],
                                  ["repro", "no-such-scenario", "--bisect-exit-codes"],
                                  ["repro", "ftrace-function", "--repeat", "0", "--bisect-exit-codes"]])
def test_usage_errors_abort_a_bisect(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    def status(args: list[str]) -> int:
        try:
            return cli.main(args)
        except SystemExit as exc:  # argparse's own errors, as the console script exits
            return int(exc.code or 0)

    assert status(argv) == BISECT_USAGE_EXIT
    err = capsys.readouterr().err
    assert err.startswith("pokelab: usage: ") and err.count("\n") == 1, err
    assert status([a for a in argv if a != "--bisect-exit-codes"]) == 2
    capsys.readouterr()


# --------------------------------------------------------------------------- interrupted runs


def test_an_interrupted_run_is_never_pass() -> None:
    clean = {"traps_judged": 40, "violations": 0, "text_checks": 5}
    o = interrupted_outcome(clean, crashes=[], signal_name="SIGINT")
    assert o.verdict == "INCONCLUSIVE" and "interrupted by SIGINT after 40 trap(s) judged" in o.reasons[0]
    assert interrupted_outcome({}, crashes=[], signal_name="SIGTERM").verdict == "INCONCLUSIVE"
    # what was judged until then stands when it already proves a failure
    bad = {**clean, "violations": 2}
    o = interrupted_outcome(bad, crashes=[], signal_name="SIGINT")
    assert o.verdict == "FAIL" and o.reasons[-1].startswith("interrupted by SIGINT")
    assert interrupted_outcome(clean, crashes=["BUG: x"], signal_name="SIGINT").verdict == "CRASH"
    mismatch = {**clean, "text_mismatches": 1}
    assert interrupted_outcome(mismatch, crashes=[], signal_name="SIGINT").verdict == "FAIL"


def test_combine_marks_the_runs_interrupted() -> None:
    passed = {"verdict": "PASS", "reasons": ["ok"], "artifacts": "a/run-1", "kernel": "k"}
    cut = {"verdict": "INCONCLUSIVE", "reasons": ["interrupted by SIGINT after 3 trap(s) judged"],
           "artifacts": "a/run-2", "interrupted": True}
    one = repro.combine([cut], runs=None, interrupted="SIGINT", extra={})
    assert one["verdict"] == "INCONCLUSIVE" and one["interrupted"] is True
    many = repro.combine([passed, cut], runs=3, interrupted="SIGINT", extra={"scenario": "s"})
    assert many["verdict"] == "INCONCLUSIVE" and many["interrupted"] and many["runs"] == 2
    assert many["per_run"][1]["interrupted"] is True and "interrupted" not in many["per_run"][0]
    # interrupted between runs: all that ran passed, the run as asked for did not
    between = repro.combine([passed], runs=3, interrupted="SIGTERM", extra={})
    assert between["verdict"] == "INCONCLUSIVE" and "after 1 of 3 run(s)" in between["reasons"][0]
    assert repro.combine([], runs=None, interrupted="SIGINT", extra={})["verdict"] == "INCONCLUSIVE"
    assert "interrupted" not in repro.combine([passed], runs=None, interrupted=None, extra={})


class _InterruptedVm:
    """A VM whose boot is interrupted by ``exc``; records that it was closed."""

    closed: ClassVar[list[bool]] = []

    def __init__(self, spec: Any, exc: BaseException) -> None:
        self.exc = exc

    def start(self) -> None:
        raise self.exc

    def crashes(self) -> list[Any]:
        return []

    def close(self) -> None:
        _InterruptedVm.closed.append(True)


def _execute(spec: VmSpec, kernel: KernelArtifacts) -> RunResult:
    """The probe's scenario through ``execute`` on a prepared (fake) VM: the path every job takes."""
    request = RunRequest(BY_NAME["ftrace-function"], spec.artifacts)
    return execute(request, prepared=Prepared(spec, kernel))


@pytest.mark.parametrize("exc, code, name", [(KeyboardInterrupt(), 130, "SIGINT"),
                                             (SystemExit(143), 143, "SIGTERM")])
def test_run_probed_writes_the_verdict_of_an_interrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, code: int, name: str) -> None:
    monkeypatch.setattr(probe_run, "Vm", lambda spec: _InterruptedVm(spec, exc))
    _InterruptedVm.closed.clear()
    spec = VmSpec(kernel_image=tmp_path / "bz", initrd=tmp_path / "initrd", ssh_key=tmp_path / "key",
                  artifacts=tmp_path)
    kernel = KernelArtifacts(id="6.1", release="6.1.0-56-cloud-amd64", bzimage=tmp_path / "bz",
                             vmlinux=tmp_path / "vmlinux", system_map=None, config=None, modules_dir=None,
                             build_id="ab")
    with pytest.raises(RunInterrupted) as err:
        _execute(spec, kernel)
    assert (err.value.code, err.value.signal_name) == (code, name)
    written = json.loads((tmp_path / "verdict.json").read_text())
    assert isinstance(err.value.result, RunResult) and written == err.value.result.as_dict()
    assert written["verdict"] == err.value.out["verdict"]
    assert written["interrupted"] is True and written["verdict"] == "INCONCLUSIVE"
    assert written["reasons"] == [f"interrupted by {name} after 0 trap(s) judged: nothing proven"]
    assert _InterruptedVm.closed == [True]


# --------------------------------------------------------------------------- KTAP


def _summary() -> dict[str, Any]:
    return {"planned": [["6.1", "ftrace-function"], ["6.1", "kprobe-read"]],
            "results": [{"kernel_id": "6.1", "scenario": "ftrace-function", "verdict": "PASS",
                         "traps_judged": 80},
                        {"kernel_id": "6.1", "scenario": "kprobe-read", "verdict": "MISSING"}]}


def test_nightly_ktap_goes_to_stdout_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert commands._night_done(_summary(), tmp_path, "ktap") == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[:2] == ["KTAP version 1", "1..2"]
    assert "ok 1 6.1:ftrace-function" in lines and "not ok 2 6.1:kprobe-read # ERROR INCOMPLETE" in lines
    assert "ftrace-function" in err and "reports: " in err
    commands._night_done(_summary(), tmp_path, "text")
    out, _err = capsys.readouterr()
    assert "KTAP" not in out and "reports: " in out


def test_repro_ktap_of_one_run_and_of_runs() -> None:
    one = repro.combine([{"scenario": "s", "verdict": "FAIL", "reasons": ["1 emulation violation(s)"],
                          "kernel": "k", "artifacts": "a"}], runs=None, interrupted=None, extra={})
    text = repro.ktap_text(RunResult.from_record(one))
    assert text.splitlines()[:2] == ["KTAP version 1", "1..1"]
    assert "not ok 1 s" in text and "# FAIL: 1 emulation violation(s)" in text
    runs = repro.combine([{"verdict": "PASS", "artifacts": "a1"}, {"verdict": "INCONCLUSIVE",
                          "artifacts": "a2", "interrupted": True}], runs=2, interrupted="SIGINT",
                         extra={"scenario": "s"})
    lines = repro.ktap_text(RunResult.from_record(runs)).splitlines()
    assert lines[:2] == ["KTAP version 1", "1..2"]
    assert "ok 1 s run 1" in lines and "not ok 2 s run 2 # ERROR INCONCLUSIVE" in lines
    assert lines[-1] == "# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:1"


@pytest.mark.parametrize("command", ["repro", "nightly"])
def test_format_ktap_is_an_option(command: str) -> None:
    parser = build_parser()
    args = parser.parse_args([command, *(["ftrace-function"] if command == "repro" else []),
                              "--format", "ktap"])
    assert args.format == "ktap"


# --------------------------------------------------------------------------- --trigger


def test_trigger_from_a_dir_of_tc_files_and_from_a_file(tmp_path: Path) -> None:
    t = trigger.load(TRIGGERS / "ftrace-tc")
    assert t.tc and [g for _h, g in t.files] == [f"{trigger.GUEST_DIR}/function-getpid.tc",
                                                  f"{trigger.GUEST_DIR}/kprobe-getpid.tc"]
    f = trigger.load(TRIGGERS / "kprobe-getpid.sh")
    assert not f.tc and len(f.files) == 1
    with pytest.raises(UsageError, match=r"no \.tc files"):
        trigger.load(tmp_path)
    with pytest.raises(UsageError, match="no such file"):
        trigger.load(tmp_path / "x")


def test_trigger_scenario() -> None:
    run = trigger.TriggerRun(trigger.load(TRIGGERS / "kprobe-getpid.sh"))
    sc = trigger.scenario(run, function="__do_sys_getpid", min_judged=3, repeat=2)
    assert sc.name == "trigger-kprobe-getpid-sh" and sc.min_traps == 3 and sc.repeat == 2
    assert sc.requires == ("symbol:__do_sys_getpid",) and sc.final_state.site == "any"
    assert sc.floor_what() == "trap(s) judged at __do_sys_getpid's site"
    bare = trigger.scenario(run, function=None)
    assert bare.floor_what() == "trap(s) judged" and bare.final_state.site is None
    with pytest.raises(UsageError, match="not a symbol name"):
        trigger.scenario(run, function="a b")
    assert run.command().startswith("chmod +x /tmp/pokelab-trigger/kprobe-getpid.sh && ")


def test_choose() -> None:
    c = repro.choose(None, repro.ReproOptions(trigger=TRIGGERS / "ftrace-tc"), BY_NAME.get)
    assert c.scenario.name == "trigger-ftrace-tc" and c.info["trigger"]["kind"] == "tc"
    c = repro.choose("ftrace-function", repro.ReproOptions(min_judged=5, repeat=1), BY_NAME.get)
    assert c.scenario.min_traps == 5 and c.scenario.repeat == 1 and not c.info
    for name, opts, msg in ((None, repro.ReproOptions(), "give a SCENARIO"),
                            ("ftrace-function", repro.ReproOptions(trigger=TRIGGERS), "not both"),
                            ("ftrace-function", repro.ReproOptions(min_judged=0), "at least 1"),
                            ("ftrace-function", repro.ReproOptions(until_fail=True), "needs --runs")):
        with pytest.raises(UsageError, match=msg):
            repro.choose(name, opts, BY_NAME.get)


def test_tc_results_and_what_holds_against_a_run() -> None:
    out = ("noise\nPOKELAB-TC PASS 0 /tmp/pokelab-trigger/a.tc\n"
           "POKELAB-TC UNSUPPORTED 4 /tmp/pokelab-trigger/b.tc\n"
           "POKELAB-TC FAIL 1 /tmp/pokelab-trigger/sub/c.tc\n")
    res = trigger.parse_tc_results(out)
    assert [(r["test"], r["result"], r["exit"]) for r in res] == [
        ("a.tc", "PASS", 0), ("b.tc", "UNSUPPORTED", 4), ("sub/c.tc", "FAIL", 1)]
    assert trigger.problems(res, 3) == ["sub/c.tc: FAIL (exit 1)"]
    assert trigger.problems(res[:2], 3) == ["1 of 3 .tc file(s) reported no result"]
    assert trigger.problems(res[:2], 2) == []


@pytest.mark.skipif(shutil.which("timeout") is None, reason="no timeout(1) on this host")
def test_tc_runner_results(tmp_path: Path) -> None:
    """The guest's runner, run by the host's /bin/sh on a fake tracefs dir: ftracetest's codes."""
    tracing, tests = tmp_path / "tracing", tmp_path / "t"
    (tracing / "events").mkdir(parents=True)
    tests.mkdir()
    (tracing / "README").write_text("p[:[<group>/][<event>]] <place>\n")
    cases = {"a-pass.tc": "echo hi > trace\nexit_pass\n",
             "b-set-e.tc": "false\necho unreachable\n",
             "c-fail.tc": "fail 'it broke'\n",
             "d-unsupported.tc": "exit_unsupported\n",
             "e-requires.tc": "# requires: no_such_file\nexit_pass\n",
             "f-readme.tc": '# requires: "p[:[<group>/][<event>]] <place>":README\nexit_xfail\n',
             "g-readme-missing.tc": '# requires: "nothing like this":README\nexit_pass\n',
             "h-slow.tc": "sleep 5\n",
             "i-unresolved.tc": "exit_unresolved\n"}
    for name, body in cases.items():
        (tests / name).write_text(body)
    runner = resources.files("orchestrator.run").joinpath("data/tc_runner.sh")
    res = subprocess.run(["sh", str(runner), str(tracing), "1", *sorted(str(tests / n) for n in cases)],
                         capture_output=True, text=True, timeout=60, check=False)
    got = {Path(r["test"]).name: r["result"] for r in trigger.parse_tc_results(res.stdout)}
    assert got == {"a-pass.tc": "PASS", "b-set-e.tc": "FAIL", "c-fail.tc": "FAIL",
                   "d-unsupported.tc": "UNSUPPORTED", "e-requires.tc": "UNSUPPORTED", "f-readme.tc": "XFAIL",
                   "g-readme-missing.tc": "UNSUPPORTED", "h-slow.tc": "TIMEOUT",
                   "i-unresolved.tc": "UNRESOLVED"}, res.stdout + res.stderr
    assert "it broke" in (tests / "c-fail.tc.log").read_text()
    assert (tracing / "current_tracer").read_text() == "nop\n"  # initialize_ftrace ran


def test_git_bisect_run_aborts_on_a_usage_error(tmp_path: Path) -> None:
    """Real ``git bisect run`` over a tiny history with a bad pokelab command line: git stops at
    once instead of marking the revision bad (or skipping every one)."""
    import os
    import sys

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True,
                              timeout=60, check=False,
                              env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
                                   "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"})

    git("init", "-q", "-b", "main")
    for i in range(4):
        (tmp_path / "f").write_text(str(i))
        git("add", "f")
        git("commit", "-q", "-m", f"c{i}")
    assert git("bisect", "start", "HEAD", "HEAD~3").returncode == 0
    res = git("bisect", "run", sys.executable, "-m", "orchestrator.cli", "repro", "--bisect-exit-codes",
              "--no-such-option")
    assert res.returncode != 0
    assert "128" in res.stdout + res.stderr, res.stdout + res.stderr
    log = git("bisect", "log").stdout
    assert log.count("# bad:") == 1 and log.count("# good:") == 1, log  # only the two endpoints
    assert "skip" not in log


def _broken_wait(sig: BaseException) -> RuntimeError:
    """What a signal raised inside threading.Condition.wait can surface as."""
    try:
        try:
            raise sig
        except BaseException:
            raise RuntimeError("release unlocked lock") from None
    except RuntimeError as exc:
        exc.__context__ = sig
        return exc


def test_signal_exception_finds_the_signal_behind_other_errors() -> None:
    from orchestrator.core.errors import InfraError, signal_exception

    ki = KeyboardInterrupt()
    assert signal_exception(ki) is ki
    assert signal_exception(_broken_wait(ki)) is ki
    wrapped = InfraError("GDB did not answer")
    wrapped.__context__ = _broken_wait(SystemExit(143))
    assert isinstance(signal_exception(wrapped), SystemExit)
    assert signal_exception(RuntimeError("x")) is None and signal_exception(None) is None


def test_signal_stop_is_what_the_cli_says_and_exits_with() -> None:
    from orchestrator.core.errors import InfraError, Terminated, signal_stop

    assert signal_stop(RunInterrupted({}, 143, "SIGTERM")) == ("interrupted by SIGTERM", 143)
    assert signal_stop(_broken_wait(KeyboardInterrupt())) == ("interrupted", 130)
    assert signal_stop(Terminated(143)) == ("terminated", 143)
    hidden = InfraError("GDB did not answer")
    hidden.__context__ = _broken_wait(Terminated(143))
    assert signal_stop(hidden) == ("terminated", 143)
    assert signal_stop(SystemExit(2)) is None and signal_stop(RuntimeError("x")) is None


@pytest.mark.parametrize("exc, code", [(_broken_wait(SystemExit(143)), 143),
                                       (_broken_wait(KeyboardInterrupt()), 130)])
def test_run_probed_sees_a_signal_behind_a_broken_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     exc: BaseException, code: int) -> None:
    monkeypatch.setattr(probe_run, "Vm", lambda spec: _InterruptedVm(spec, exc))
    spec = VmSpec(kernel_image=tmp_path / "bz", initrd=tmp_path / "initrd", ssh_key=tmp_path / "key",
                  artifacts=tmp_path)
    kernel = KernelArtifacts(id="6.1", release="r", bzimage=tmp_path / "bz", vmlinux=tmp_path / "v",
                             system_map=None, config=None, modules_dir=None, build_id="ab")
    with pytest.raises(RunInterrupted) as err:
        _execute(spec, kernel)
    assert err.value.code == code
    assert json.loads((tmp_path / "verdict.json").read_text())["interrupted"] is True
