"""End to end: the probe catches a real kernel with the 2019 bug class, and passes the same tree without it.

Builds Debian's linux-source-6.1 twice (ccache and the kept O= dir make the
second build incremental), boots each under the probe, checks the verdicts;
then runs ``ops-one`` (our module, built against each kernel's kept build files).
Slow (a cold build is ~10+ min on 2 cores): run with `make e2e-patched`, never
part of `make test`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.kbuild import build_kernel
from orchestrator.kernels import images_dir

pytestmark = pytest.mark.slow

PATCH = images_dir() / "patches" / "0001-x86-alternative-emulate-call-to-ftrace_stub.patch"
SOURCE = Path(os.environ["POKELAB_KERNEL_SOURCE"]) if os.environ.get("POKELAB_KERNEL_SOURCE") else None
TOGGLES = os.environ.get("POKELAB_E2E_TOGGLES", "3")


def _probe(kernel_id: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{kernel_id}.json"
    status = cli.main(["probe", "--kernel", kernel_id, "--toggles", TOGGLES, "--json", str(out),
                       "--artifacts", str(tmp_path / kernel_id)])
    verdict = json.loads(out.read_text())
    print(f"{kernel_id}: exit {status} verdict {verdict['verdict']} traps judged "
          f"{verdict.get('traps_judged')} violations {verdict.get('violations')}")
    return {"status": status, **verdict}


def test_patched_kernel_fails_unpatched_passes(tmp_path: Path) -> None:
    plain = build_kernel(SOURCE, say=print)
    print(f"unpatched {plain.kernel_id}: make {plain.seconds:.0f} s")
    bad = build_kernel(SOURCE, patches=[PATCH], say=print)
    print(f"patched {bad.kernel_id}: make {bad.seconds:.0f} s")
    assert plain.build_id != bad.build_id

    good = _probe(plain.kernel_id, tmp_path)
    assert good["verdict"] == "PASS", good.get("reasons")
    assert good["status"] == 0
    assert good["traps_judged"] > 0 and good["violations"] == 0

    caught = _probe(bad.kernel_id, tmp_path)
    assert caught["verdict"] == "FAIL", caught.get("reasons")
    assert caught["status"] == 1
    assert caught["violations"] > 0
    assert caught["violation_examples"], "a FAIL must show its violations"

    # our module, built against the build files kept with each kernel: its ftrace_ops trampoline
    # is a call target the bug misses too
    for kernel_id, want, status in ((plain.kernel_id, "PASS", 0), (bad.kernel_id, "FAIL", 1)):
        assert (plain.kernel_dir.parent / kernel_id / "build" / "Makefile").is_file()
        out = tmp_path / f"ops-{kernel_id}.json"
        got = cli.main(["repro", "ops-one", "--kernel", kernel_id, "--json", str(out),
                        "--artifacts", str(tmp_path / f"ops-{kernel_id}")])
        verdict = json.loads(out.read_text())
        print(f"ops-one on {kernel_id}: exit {got} verdict {verdict['verdict']} "
              f"violations {verdict.get('violations')}")
        assert (verdict["verdict"], got) == (want, status), verdict.get("reasons")
