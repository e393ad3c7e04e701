"""``execute(request) -> RunResult``: the one way every job runs a scenario under the probe.

repro, probe, nightly, bisect, bench and the pytest plugin build a
:class:`.request.RunRequest` and call :func:`execute`; it prepares what the run
needs (:func:`.prepare.prepare`), checks the scenario's requirements, runs the
probed body (:func:`.probe_run.run_probed`), and writes the one ``verdict.json``
(:meth:`.result.RunResult.write`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..core.errors import PokelabError, RunInterrupted, Unsupported, UsageError
from ..core.trapdata import INJECT_EVERY
from ..core.verdict import Verdict
from ..kernels.images import KernelArtifacts
from ..machine.vm import Vm, VmSpec
from .prepare import Prepared, prepare
from .probe_run import Progress, Run, run_probed
from .request import RunRequest
from .result import RunResult
from .scenario import (
    Scenario,
    guest_check_script,
    parse_kconfig,
    parse_missing,
    parse_requirement,
    unmet_config,
)
from .scenario_body import ScenarioBody, present_requirements

log = logging.getLogger(__name__)

#: the run's hold at the first violation (``repro --gdb``): see :func:`.probe_run.run_probed`
Hold = Callable[[Run], None]


def _scenario_record(sc: Scenario, request: RunRequest) -> dict[str, Any]:
    return {"scenario": sc.name, "description": sc.description, "function": sc.function,
            "repeat": sc.repeat, "min_traps": sc.min_traps,
            "workload": str(request.workload) if request.workload else None, **request.info}


def _refusal(sc: Scenario, kernel: KernelArtifacts) -> str | None:
    """Why the scenario cannot run on this kernel before it boots (UNSUPPORTED), or None."""
    if sc.unsupported:
        return sc.unsupported
    reqs = sc.requirements()
    if any(r.kind == "config" for r in reqs) and kernel.config is not None and kernel.config.is_file():
        unmet = unmet_config(reqs, parse_kconfig(kernel.config.read_text(errors="replace")))
        if unmet:
            return "kernel config: " + "; ".join(unmet)
    return None


def _probed(spec: VmSpec, kernel: KernelArtifacts, request: RunRequest, out: dict[str, Any],
            progress: Progress, hold: Hold | None) -> dict[str, Any]:
    sc = request.scenario
    reqs = sc.requirements()
    out["requires"] = [str(r) for r in reqs]
    if any(r.kind == "config" for r in reqs) and not (kernel.config is not None and kernel.config.is_file()):
        out["notes"] = ["no kernel config for this kernel: config requirements not checked"]

    def pre_attach(vm: Vm) -> None:
        missing = parse_missing(vm.check(guest_check_script(reqs)))
        if missing:
            raise Unsupported("missing in the guest: " + ", ".join(missing))
        if sc.unsupported_if:
            conds = [parse_requirement(sc.expand(r)) for r, _ in sc.unsupported_if]
            for (text, why), met in zip(sc.unsupported_if, present_requirements(vm, conds), strict=True):
                if met:
                    raise Unsupported(f"{sc.expand(text)}: {why}")
        if request.baseline_cycles:
            progress(f"baseline: {request.baseline_cycles} cycle(s) without the probe")
            body.baseline(vm, request.baseline_cycles)

    body = ScenarioBody(sc, request.workload, out)
    return run_probed(spec, kernel, out, body, inject=request.inject,
                      inject_every=request.inject_every or INJECT_EVERY, min_judged=sc.min_traps,
                      pre_attach=pre_attach, progress=progress, hold=hold, budget=sc.budget)


def execute(request: RunRequest, *, prepared: Prepared | None = None,
            prepare_with: Callable[[RunRequest], Prepared] = prepare,
            progress: Progress = lambda s: None, hold: Hold | None = None) -> RunResult:
    """Prepare (``prepare_with``, unless ``prepared``), run and judge ``request``; the result, written.

    Never raises for a verdict: an error of the host, the kernel or the scenario becomes the
    verdict its class carries (``verdict_for``).  Raises UsageError for a bad request (nothing
    written), and RunInterrupted on SIGINT/SIGTERM with ``.result`` written (never PASS).
    """
    sc = request.scenario
    out = _scenario_record(sc, request)
    base = {**out, "kernel_id": request.kernel.kernel, "inject": request.inject,
            "artifacts": str(request.artifacts)}
    try:
        p = prepared or prepare_with(request)
        out.update({"kernel": p.kernel.release, "kernel_id": p.kernel.id, **p.spec.qemu_record,
                    "inject": request.inject, "artifacts": str(p.spec.artifacts)})
        refused = _refusal(sc, p.kernel)
    except UsageError:
        raise
    except (PokelabError, ValueError) as exc:  # ValueError: a scenario's malformed requirement
        err = exc if isinstance(exc, PokelabError) else PokelabError(str(exc))
        result = RunResult.of_error(err, {**base, **out})
        result.write()
        return result
    if refused is not None:
        result = RunResult.from_record({**out, "verdict": Verdict.UNSUPPORTED, "reasons": [refused]})
        result.write()
        return result
    try:
        record = _probed(p.spec, p.kernel, request, out, progress, hold)
    except RunInterrupted as exc:
        result = RunResult.from_record(exc.out)
        result.write()
        exc.result = result
        raise
    result = RunResult.from_record(record)
    result.write()
    return result


#: what jobs run requests with: :class:`Executor`, or a fake in unit tests
Execute = Callable[[RunRequest], RunResult]


class Executor:
    """:func:`execute` for a job's many requests: each (kernel, VM options, scenario) is prepared once,
    under one lock (one cache writer at a time when jobs run cells in parallel), and every run
    reports to ``progress`` and stops at a violation with ``hold`` (``repro --gdb``).
    """

    def __init__(self, progress: Progress = lambda s: None, hold: Hold | None = None) -> None:
        self.progress = progress
        self.hold = hold
        self._lock = threading.Lock()
        self._prepared: dict[tuple[Any, ...], Prepared] = {}

    def prepare(self, request: RunRequest) -> Prepared:
        key = (request.kernel, request.vm, request.scenario.name)
        with self._lock:
            p = self._prepared.get(key)
            if p is None:
                p = self._prepared[key] = prepare(request)
        return replace(p, spec=replace(p.spec, artifacts=request.artifacts))

    def __call__(self, request: RunRequest) -> RunResult:
        return execute(request, prepare_with=self.prepare, progress=self.progress, hold=self.hold)
