"""``pokelab bisect --debian``: Debian's prebuilt kernels, fetched and judged for real (no builds).

The range is what the archive has today: from the oldest 6.1 cloud kernel with
-dbg (catalog id ``6.1-oldest``) to the newest (``6.1``).  Those kernels pass
``ftrace-function``, so the honest outcome of a bisect of that range is that its
bad endpoint does not hold: both endpoints booted, probed and judged, then a
one-line error.  The culprit-finding walk itself is tested on scripted steps
(tests/unit/test_bisect_driver.py); here everything but the walk is real.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.host.cache import cache_dir
from orchestrator.kernels.catalog import Catalog
from orchestrator.kernels.debian import available, resolve, select_range

pytestmark = pytest.mark.vm

POKELAB = [sys.executable, "-m", "orchestrator.cli"]
ARGS = ["bisect", "--debian", "6.1-oldest..6.1", "--scenario", "ftrace-function", "--runs", "1"]


def test_both_endpoints_are_judged_on_real_kernels_then_replayed(tmp_path: Path) -> None:
    # what the archive lists now (pokelab's own apt sources), not ABIs written down here
    kernels = available(cache_dir(), "cloud-amd64")
    cat = Catalog.load()
    good, bad = (resolve(cat.get(k), kernels) for k in ("6.1-oldest", "6.1"))
    rng = select_range(kernels, good.abi, bad.abi)
    if len(rng.judged) < 2:
        pytest.skip(f"the archive has only {good.release} with -dbg in the 6.1 line")

    logf = tmp_path / "bisect.jsonl"
    res = subprocess.run([*POKELAB, *ARGS, "--log", str(logf), "--artifacts", str(tmp_path / "art")],
                         capture_output=True, text=True, timeout=1800, check=False)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2, res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last == (f"pokelab: usage: the bad endpoint {bad.release} came out good: "
                    "1 clean runs, no failure"), res.stderr
    assert f"{len(rng.judged)} Debian kernels with -dbg from {good.label}" in res.stderr
    if rng.unjudgeable:
        assert ("not judgeable (no -dbg in the archive): "
                + ", ".join(k.abi for k in rng.unjudgeable)) in res.stderr
    recs = [json.loads(line) for line in logf.read_text().splitlines()]
    assert [(r["revision"], r["outcomes"], r["decision"]) for r in recs] == [
        (good.release, ["PASS"], "good"), (bad.release, ["PASS"], "good")]
    for k in (good, bad):
        verdict = json.loads((tmp_path / "art" / k.abi / "run-1" / "verdict.json").read_text())
        assert verdict["verdict"] == "PASS" and verdict["traps_judged"] > 0, verdict
        # the verdict names the Debian package and version that was judged
        assert (verdict["kernel_package"], verdict["kernel_version"]) == (k.image_pkg, k.version), verdict

    again = subprocess.run([*POKELAB, *ARGS, "--replay", str(logf)], capture_output=True, text=True,
                           timeout=120, check=False)
    assert again.returncode == 2 and "[from the log]" in again.stderr, again.stderr
    assert "fetching" not in again.stderr  # nothing run again
    assert len(logf.read_text().splitlines()) == 2
