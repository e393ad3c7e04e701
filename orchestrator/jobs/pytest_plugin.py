"""pytest plugin for pokelab scenarios: options, the artifact dir, and running a scenario.

Loaded by ``scenarios/conftest.py`` (``pytest_plugins``).  Options:
``--pokelab-kernel ID`` (repeatable; default: 6.1 and 6.12), ``--pokelab-smp N``,
``--pokelab-accel auto|tcg|kvm``, ``--pokelab-repeat N`` (cycles per scenario).
A verdict of UNSUPPORTED becomes ``pytest.skip(reason)``: visible, never a silent pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DEFAULT_KERNELS = ("6.1", "6.12")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("pokelab")
    g.addoption("--pokelab-kernel", action="append", metavar="ID",
                help="kernel id to run scenarios on (repeatable; default: 6.1 and 6.12)")
    g.addoption("--pokelab-smp", type=int, default=4, metavar="N", help="vCPUs (default 4)")
    g.addoption("--pokelab-accel", default="auto", choices=("auto", "tcg", "kvm"),
                help="accelerator (default auto)")
    g.addoption("--pokelab-repeat", type=int, default=None, metavar="N",
                help="cycles of each scenario's steps (default: the scenario's own)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: boots a real QEMU guest (slow)")


def kernels(config: pytest.Config) -> list[str]:
    return list(config.getoption("--pokelab-kernel") or DEFAULT_KERNELS)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pokelab_kernel" in metafunc.fixturenames:
        metafunc.parametrize("pokelab_kernel", kernels(metafunc.config))


@dataclass(frozen=True)
class PokelabOptions:
    smp: int
    accel: str
    repeat: int | None


@pytest.fixture(scope="session")
def pokelab_options(request: pytest.FixtureRequest) -> PokelabOptions:
    c = request.config
    return PokelabOptions(c.getoption("--pokelab-smp"), c.getoption("--pokelab-accel"),
                          c.getoption("--pokelab-repeat"))


@pytest.fixture
def pokelab_artifacts(tmp_path: Path) -> Path:
    """This test's artifact dir (console log, MI log, trap log, verdict.json)."""
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


@pytest.fixture
def run_scenario(pokelab_options: PokelabOptions, pokelab_artifacts: Path):  # type: ignore[no-untyped-def]
    """``run_scenario(scenario, kernel_id, inject=None, workload=None) -> RunResult`` (the same
    path as ``pokelab repro``: a RunRequest through ``execute``)."""
    from ..run.execute import execute
    from ..run.request import KernelChoice, RunRequest, VmOptions
    from ..run.result import RunResult
    from ..run.scenario import Scenario, with_options

    def _run(sc: Scenario, kernel_id: str, inject: str | None = None,
             workload: Path | None = None) -> RunResult:
        request = RunRequest(with_options(sc, repeat=pokelab_options.repeat), pokelab_artifacts,
                             kernel=KernelChoice(kernel_id),
                             vm=VmOptions(smp=pokelab_options.smp, accel=pokelab_options.accel),
                             inject=inject, workload=workload)
        return execute(request)

    return _run


def expect_pass(out: Any) -> None:
    """PASS, or a visible skip for UNSUPPORTED; anything else fails with the reasons."""
    verdict, reasons = out["verdict"], "; ".join(out.get("reasons", []))
    if verdict == "UNSUPPORTED":
        pytest.skip(f"UNSUPPORTED on {out.get('kernel')}: {reasons}")
    assert verdict == "PASS", (f"{out.get('scenario')} on {out.get('kernel')}: {verdict}: {reasons} "
                               f"(artifacts {out.get('artifacts')})")
