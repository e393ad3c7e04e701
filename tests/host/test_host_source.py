"""Claims on the real kernel sources and kernels in the cache (moved from tests/unit, issue 14)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
from fakekernel import fake_bzimage
from test_bench_kbuild import apply_patch

from orchestrator.core.errors import UsageError
from orchestrator.host.cache import cache_dir
from orchestrator.jobs.bench_kbuild import MARKED_FILE, marker_patch, with_marker
from orchestrator.kernels.images import KernelArtifacts, artifacts_from_paths

TRUE = Path(shutil.which("true") or "/bin/true").resolve()


def test_marker_patch_applies_to_the_real_source(tmp_path: Path) -> None:
    src = cache_dir() / "src" / "linux-source-6.1"
    if not (src / MARKED_FILE).is_file():  # unpacked by `make bench` / `pokelab bench`, not `make images`
        pytest.skip(f"no unpacked linux-source-6.1 at {src} (make bench unpacks it)")
    original = (src / MARKED_FILE).read_text()
    text = marker_patch(original, 123456789)
    apply_patch(src, text, "--dry-run")  # nothing is written
    copy = tmp_path / "tree"
    (copy / MARKED_FILE).parent.mkdir(parents=True)
    (copy / MARKED_FILE).write_text(original)
    apply_patch(copy, text)
    assert (copy / MARKED_FILE).read_text() == with_marker(original, 123456789)


def test_debian_pair_matches(tmp_path: Path, kernel_6_1: KernelArtifacts) -> None:
    art = artifacts_from_paths(kernel_6_1.bzimage, kernel_6_1.vmlinux)
    assert art.release == kernel_6_1.release
    assert len(art.build_id) == 40
    fake = tmp_path / "bzImage"
    fake.write_bytes(fake_bzimage(gzip.compress(TRUE.read_bytes())))
    with pytest.raises(UsageError, match="is not the vmlinux of"):
        artifacts_from_paths(fake, kernel_6_1.vmlinux)
