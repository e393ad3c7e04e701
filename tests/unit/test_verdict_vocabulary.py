"""One verdict vocabulary (core/verdict.py): every error class names its verdict, every verdict
has an exit status, the named sets agree with the exit table."""

from __future__ import annotations

import json

import pytest

from orchestrator.core import errors
from orchestrator.core.verdict import (
    EXIT_CODES,
    FAILING,
    PROVES_NOTHING,
    REPRODUCED,
    Verdict,
    exit_status,
    verdict_for,
)
from orchestrator.jobs.bisect import BisectAborted, BisectError
from orchestrator.kernels.kbuild import BuildError
from orchestrator.run.probe_run import StoppedAtViolation


@pytest.mark.parametrize(("exc", "want"), [
    (errors.UsageError("x"), "USAGE"),
    (errors.InfraError("x"), "INFRA"),
    (errors.BootError("x"), "BOOT_FAIL"),
    (errors.KernelCrash("x"), "CRASH"),
    (errors.Unsupported("x"), "UNSUPPORTED"),
    (errors.PokelabError("x"), "INFRA"),
    (BisectError("x"), "USAGE"),
    (BisectAborted("x"), "INFRA"),
    (BuildError("x"), "USAGE"),
    (StoppedAtViolation("x"), "FAIL"),
    (RuntimeError("not ours"), "INFRA"),
])
def test_each_error_carries_its_verdict(exc: BaseException, want: str) -> None:
    assert verdict_for(exc) == want
    assert isinstance(verdict_for(exc), Verdict)


def test_every_verdict_has_an_exit_status_and_the_sets_agree() -> None:
    for v in Verdict:
        assert v in EXIT_CODES
    assert {v for v in Verdict if EXIT_CODES[v] == 1} == FAILING
    assert REPRODUCED < FAILING
    assert not (FAILING & PROVES_NOTHING)
    assert all(EXIT_CODES[v] == 2 for v in PROVES_NOTHING)
    assert exit_status(Verdict.CRASH, bisect=True) == 1 and exit_status("USAGE", bisect=True) == 128


def test_verdicts_are_plain_strings_in_json() -> None:
    assert json.dumps({"verdict": Verdict.PASS}) == '{"verdict": "PASS"}'
    assert Verdict.FAIL == "FAIL" and "CRASH" in REPRODUCED
