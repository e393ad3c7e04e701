"""``pokelab bench`` part ``kbuild``: what a kernel build and a bisect step cost, measured for real.

Figures (Debian's linux-source-6.1, the default config fragments, ``make -j`` = ``jobs``):

* ``kernel_build_full_s`` / ``kernel_build_full_make_s``: a build from nothing: an empty
  CCACHE_DIR (a temp dir, deleted afterwards; the shared ``<cache>/ccache`` is not touched), an
  empty scratch tree and an empty O= dir.  ``_s`` is all of ``build_kernel`` (copying the tree into
  the scratch dir, config, make), ``_make_s`` the kernel make alone.
* ``kernel_build_incremental_s`` / ``kernel_build_incremental_make_s``: right after, the same build
  with a one-line patch to ``arch/x86/kernel/alternative.c`` (a ``__used`` constant holding a
  number new in every run, so the object changes and ccache cannot hit).
* ``bisect_step_s``: one step as ``pokelab bisect`` runs it (``bisect.kernel_step``): the tree
  changes by another line, an incremental build, then ``bisect_step_runs`` runs of the scenario
  ``bisect_step_scenario`` on the built kernel, each booting its own VM; ``bisect_step_build_s``
  is the build's share.  A run that is not PASS fails the benchmark.
* ``kernel_build_jobs``, ``kbuild_release``, ``kbuild_date``.

kbuild keys its scratch tree and O= dir on the source path, and a bisect step builds a source
tree that changed in place; so the three builds use a hard-link copy of the source at
``<cache>/bench/linux-source-6.1`` (its own ``kbuild/<key>/``, emptied first), and the step's
change replaces the copy's file (a new inode: the cached source is never written).  The copy,
its ``kbuild/<key>/`` and the kernels registered here are deleted afterwards (after a failure
the copy and the build dir stay for a look, until the next run).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import InfraError, UsageError
from ..host import procs
from ..kernels import images, kbuild

log = logging.getLogger(__name__)

MARKED_FILE = "arch/x86/kernel/alternative.c"
STEP_SCENARIO = "ftrace-function"
STEP_RUNS = 3  # the default of `pokelab bisect --runs`
COPY_TIMEOUT_S = 1200.0


def marker_line(marker: int) -> str:
    return f"static const int pokelab_bench_marker __used = {marker};\n"


def with_marker(text: str, marker: int) -> str:
    """``text`` (a C file) with a marker constant appended: one line that changes the object."""
    if not text.endswith("\n"):
        raise ValueError("the file does not end with a newline")
    return text + marker_line(marker)


def marker_patch(original: str, marker: int, path: str = MARKED_FILE) -> str:
    """A ``patch -p1`` unified diff that adds the marker line to ``path`` whose text is ``original``."""
    return "".join(difflib.unified_diff(original.splitlines(keepends=True),
                                        with_marker(original, marker).splitlines(keepends=True),
                                        f"a/{path}", f"b/{path}"))


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` as a new file at ``path``: a hard link's other names keep the old content."""
    tmp = path.with_name(path.name + ".pokelab-new")
    tmp.write_text(text)
    os.replace(tmp, path)


def _make_s(res: kbuild.BuildResult) -> float | None:
    try:
        value = json.loads((res.kernel_dir / "meta.json").read_text()).get("make_s")
    except (OSError, ValueError):
        return None
    return float(value) if value is not None else None


def run_kbuild_bench(artifacts: Path, jobs: int = 2, runs: int = STEP_RUNS,
                     progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Measure a cold full build, an incremental build and a bisect step; the figures above."""
    from ..host.cache import cache_dir
    from ..run.execute import Executor
    from ..run.request import KernelChoice, RunRequest
    from ..run.scenarios_table import BY_NAME
    from .bisect import kernel_step

    if jobs < 1 or runs < 1:
        raise UsageError("the kbuild benchmark needs jobs >= 1 and runs >= 1")
    cache = cache_dir()
    bench_dir = cache / "bench"
    sc = BY_NAME[STEP_SCENARIO]
    execute = Executor()
    figures: dict[str, Any] = {"kernel_build_jobs": jobs,
                               "kbuild_date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with images.exclusive_lock(bench_dir / ".lock", "a kbuild benchmark"):
        source = kbuild.default_source(cache)
        original = (source / MARKED_FILE).read_text()
        copy = bench_dir / source.name
        work = kbuild.work_dir(copy.resolve(), cache)
        for stale in (copy, work):  # an earlier run's, left after a failure
            if stale.exists():
                shutil.rmtree(stale)
        known = kbuild.registered(cache)
        ours: list[str] = []  # kernels this run registered (not someone else's, built meanwhile)
        tmp = Path(tempfile.mkdtemp(prefix="kbuild-", dir=bench_dir))
        ok = False
        try:
            progress(f"hard-link copy of {source} at {copy}")
            procs.run(["cp", "-al", str(source), str(copy)], timeout=COPY_TIMEOUT_S,
                      what="hard-link copy of the kernel source")
            ccache = tmp / "ccache"
            ccache.mkdir()
            progress(f"full build, empty ccache {ccache}, -j{jobs}")
            full = kbuild.build_kernel(copy, jobs=jobs, say=progress, ccache_dir=ccache)
            ours.append(full.kernel_id)
            figures["kbuild_release"] = full.release
            figures["kernel_build_full_s"] = round(full.seconds, 1)
            figures["kernel_build_full_make_s"] = _make_s(full)

            marker = int(time.time() * 1000) % 1_000_000_000
            patch = tmp / "bench-marker.patch"
            patch.write_text(marker_patch(original, marker))
            progress(f"incremental build: {patch.name} adds a line to {MARKED_FILE}")
            incr = kbuild.build_kernel(copy, patches=[patch], jobs=jobs, say=progress, ccache_dir=ccache)
            ours.append(incr.kernel_id)
            if incr.build_id == full.build_id:
                raise InfraError(f"the one-line change to {MARKED_FILE} did not change the kernel")
            figures["kernel_build_incremental_s"] = round(incr.seconds, 1)
            figures["kernel_build_incremental_make_s"] = _make_s(incr)

            built: list[kbuild.BuildResult] = []

            def run_one(sha: str, i: int, res: Any) -> str:  # as bisect's step: a RunRequest, executed
                if not built:
                    built.append(res)
                    ours.append(res.kernel_id)
                req = RunRequest(sc, artifacts / f"run-{i + 1}", kernel=KernelChoice(res.kernel_id))
                return str(execute(req).verdict)

            replace_file(copy / MARKED_FILE, with_marker(original, marker + 1))
            step = kernel_step(run_one, jobs=jobs, runs=runs, say=progress)
            started = time.monotonic()
            outcomes = step("bench-step", copy)
            step_s = time.monotonic() - started
            if not built or any(o != "PASS" for o in outcomes):
                raise InfraError(f"the benchmark's bisect step ended {', '.join(outcomes)}, not all PASS "
                                 f"(artifacts: {artifacts})")
            figures["bisect_step_s"] = round(step_s, 1)
            figures["bisect_step_build_s"] = round(built[0].seconds, 1)
            figures["bisect_step_make_s"] = _make_s(built[0])
            figures["bisect_step_runs"] = runs
            figures["bisect_step_scenario"] = sc.name
            ok = True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            kbuild.unregister(sorted(set(ours) - known), cache)
            if ok:
                shutil.rmtree(copy, ignore_errors=True)
                shutil.rmtree(work, ignore_errors=True)
            else:
                progress(f"left for a look: {copy} and {work} (the next run deletes them)")
    return figures
