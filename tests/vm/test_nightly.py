"""A short real nightly: 2 kernels x 2 scenarios through the real CLI, 2 VMs at a time (under a minute).

TCG ``thread=single`` runs each VM on one host thread, so ``-j 2`` fits this 2-core machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

POKELAB = [sys.executable, "-m", "orchestrator.cli"]
KERNELS = ("6.1", "6.12")
SCENARIOS = ("ftrace-function", "kprobe-ftrace")


def test_short_nightly(tmp_path: Path) -> None:
    out = tmp_path / "night"
    res = subprocess.run([*POKELAB, "nightly", "--kernels", ",".join(KERNELS), "--scenarios",
                          ",".join(SCENARIOS), "--repeat", "1", "-j", "2", "--out", str(out),
                          "--kcidb", str(tmp_path / "kcidb.json")],
                         capture_output=True, text=True, timeout=1500, check=False)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "4 cell(s), 2 at a time" in res.stdout + res.stderr

    suites = ET.parse(out / "junit.xml").getroot()
    cases = suites.findall("./testsuite/testcase")
    assert len(cases) == 4
    assert {(c.get("classname"), c.get("name")) for c in cases} == {
        (f"pokelab.{k}", s) for k in KERNELS for s in SCENARIOS}
    assert suites.get("failures") == "0" and suites.get("errors") == "0"

    page = (out / "index.html").read_text()
    for k in KERNELS:
        for s in SCENARIOS:
            assert f'id="{k}--{s}"' in page
    # one trap timeline per cell, and the traps-by-user chart of the census
    assert page.count("<svg") == 4 + 1 and "http://" not in page.replace("http://www.w3.org/2000/svg", "")

    summary = json.loads((out / "summary.json").read_text())
    assert [r["verdict"] for r in summary["results"]] == ["PASS"] * 4
    for r in summary["results"]:
        assert r["traps_judged"] > 0 and r["timeline"], r
        for f in r["files"]:
            assert (out / r["artifacts"] / f).is_file()
    kc = json.loads((tmp_path / "kcidb.json").read_text())
    assert [t["status"] for t in kc["tests"]] == ["PASS"] * 4
