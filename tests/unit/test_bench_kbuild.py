"""The kbuild benchmark's pure parts: the marker patch, the hard-link-safe rewrite, the parts' JSON merge."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.core.errors import UsageError
from orchestrator.host import procs
from orchestrator.jobs import bench
from orchestrator.jobs.bench_kbuild import MARKED_FILE, marker_line, marker_patch, replace_file, with_marker
from orchestrator.kernels import kbuild

C_FILE = "#include <linux/kernel.h>\n\nvoid f(void)\n{\n}\n"


def apply_patch(tree: Path, patch_text: str, *extra: str) -> None:
    patch = tree.parent / "marker.patch"
    patch.write_text(patch_text)
    procs.run(["patch", "-p1", "--forward", "--batch", *extra, "-i", str(patch)], cwd=tree, timeout=60,
              what="patch")


def test_the_marker_is_one_line_of_code() -> None:
    assert with_marker(C_FILE, 7) == C_FILE + "static const int pokelab_bench_marker __used = 7;\n"
    assert marker_line(7) != marker_line(8)  # a new number each run: ccache cannot hit
    # code, not a comment the preprocessor would drop (ccache's preprocessed mode would then hit)
    assert not marker_line(7).lstrip().startswith(("//", "/*", "#"))
    with pytest.raises(ValueError):
        with_marker("int x;", 1)


def test_marker_patch_applies_and_gives_the_marked_file(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    target = tree / MARKED_FILE
    target.parent.mkdir(parents=True)
    target.write_text(C_FILE)
    text = marker_patch(C_FILE, 42)
    assert text.startswith(f"--- a/{MARKED_FILE}\n+++ b/{MARKED_FILE}\n")
    assert [ln for ln in text.splitlines() if ln.startswith("+") and not ln.startswith("+++")] == \
        ["+" + marker_line(42).rstrip("\n")]
    apply_patch(tree, text)
    assert target.read_text() == with_marker(C_FILE, 42)


def test_marker_patch_is_what_kbuild_restores(tmp_path: Path) -> None:
    p = tmp_path / "m.patch"
    p.write_text(marker_patch(C_FILE, 1))
    assert kbuild.patched_paths(p) == [MARKED_FILE]  # so the next build's sync puts the file back


def test_replace_file_leaves_the_other_hard_link_alone(tmp_path: Path) -> None:
    a, b = tmp_path / "a.c", tmp_path / "b.c"
    a.write_text(C_FILE)
    os.link(a, b)
    replace_file(b, with_marker(C_FILE, 3))
    assert a.read_text() == C_FILE
    assert b.read_text() == with_marker(C_FILE, 3)
    assert not list(tmp_path.glob("*.pokelab-new"))


def test_a_partial_run_keeps_the_other_parts_figures() -> None:
    old = {"boot_to_ssh_s": 3.5, "date": "d1", "kernel_build_full_s": 900.0, "kbuild_date": "k1"}
    new = {"kernel_build_full_s": 880.0, "bisect_step_s": 150.0, "kbuild_date": "k2"}
    assert bench.merge_figures(old, new, complete=False) == {
        "boot_to_ssh_s": 3.5, "date": "d1", "kernel_build_full_s": 880.0, "kbuild_date": "k2",
        "bisect_step_s": 150.0}
    assert bench.merge_figures(old, new, complete=True) == new
    assert old["kernel_build_full_s"] == 900.0  # not changed in place


def test_read_figures(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    assert bench.read_figures(out) == {}
    out.write_text(json.dumps({"trap_ms": 58}))
    assert bench.read_figures(out) == {"trap_ms": 58}
    for bad in ("{not json", "[1, 2]"):
        out.write_text(bad)
        with pytest.raises(UsageError, match="not a bench JSON file"):
            bench.read_figures(out)


@pytest.mark.parametrize("parts", [(), ("vm", "gpu")])
def test_unknown_parts_are_refused_before_anything_runs(tmp_path: Path, parts: tuple[str, ...]) -> None:
    out = tmp_path / "latest.json"
    with pytest.raises(UsageError, match="part"):
        bench.run(out, parts=parts)
    assert not out.exists()


def test_unregister_drops_only_the_given_kernels(tmp_path: Path) -> None:
    kernels = tmp_path / "kernels"
    reg = {}
    for kid in ("custom-aaaa", "custom-bbbb"):
        (kernels / kid).mkdir(parents=True)
        reg[kid] = {"dir": str(kernels / kid)}
    (kernels / "custom.json").write_text(json.dumps(reg))
    assert kbuild.registered(tmp_path) == {"custom-aaaa", "custom-bbbb"}
    kbuild.unregister(["custom-aaaa"], tmp_path)
    assert kbuild.registered(tmp_path) == {"custom-bbbb"}
    assert not (kernels / "custom-aaaa").exists() and (kernels / "custom-bbbb").is_dir()
    with pytest.raises(ValueError):
        kbuild.unregister([".."], tmp_path)
    assert (kernels / "custom-bbbb").is_dir()
