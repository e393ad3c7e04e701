"""The probe on the 6.16+ layout (``smp_text_poke_int3_handler``, ``text_poke_array``, per-CPU
refs): Debian's newest 7.x line in the catalog, resolved to the newest ABI the archive lists
with its -dbg.  Real QEMU, real GDB, real kernels (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.kernels.catalog import Catalog

pytestmark = pytest.mark.vm

POKELAB = [sys.executable, "-m", "orchestrator.cli"]


def _newest_7x() -> str:
    """The catalog's newest 7.x line id for the cloud flavour (e.g. ``7.3``)."""
    lines = []
    for kid in Catalog.load().ids:
        major, _, rest = kid.partition(".")
        if major == "7" and rest.isdigit():
            lines.append((int(rest), kid))
    assert lines, "the catalog has no 7.x line"
    return max(lines)[1]


KERNEL = _newest_7x()


def _run(tmp_path: Path, command: str, *args: str, timeout: float = 900) -> tuple[int, dict]:
    out = tmp_path / "summary.json"
    res = subprocess.run([*POKELAB, command, *args, "--artifacts", str(tmp_path / "art"), "--json", str(out)],
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert "Traceback" not in res.stderr, res.stderr
    assert out.is_file(), res.stdout + res.stderr
    return res.returncode, json.loads(out.read_text())


def test_7x_probe_ten_toggles_judge_50_traps_with_no_violation(tmp_path: Path) -> None:
    rc, s = _run(tmp_path, "probe", "--kernel", KERNEL, "--toggles", "10")
    assert s["verdict"] == "PASS", s.get("reasons")
    assert rc == 0
    assert s["kernel"].startswith(KERNEL + "."), s["kernel"]
    assert s["traps_judged"] >= 50 and s["violations"] == 0
    assert s.get("batch_violations", 0) == 0
    assert s["text_checks"] > 0 and s["text_mismatches"] == 0
    assert s.get("kernel_package", "").startswith("linux-image-")


@pytest.mark.parametrize("mode", ["wrong-target", "wrong-return", "skip-call"])
def test_7x_injection_is_flagged_exactly(tmp_path: Path, mode: str) -> None:
    rc, s = _run(tmp_path, "probe", "--kernel", KERNEL, "--toggles", "2", "--inject", mode)
    assert s["verdict"] == "FAIL", s.get("reasons")
    assert rc == 1
    assert s["injected"] > 0
    assert s["injected_flagged"] == s["injected"]
    assert s["false_flags"] == 0


def test_7x_rt_kernel_passes_ftrace_function(tmp_path: Path) -> None:
    rc, s = _run(tmp_path, "repro", "ftrace-function", "--kernel", f"{KERNEL}-rt-amd64")
    assert s["verdict"] == "PASS", s.get("reasons")
    assert rc == 0
    assert "-rt-amd64" in s["kernel"]
    assert s["traps_judged"] > 0 and s["violations"] == 0
