"""kbuild's pure parts: fragment checks, patch bookkeeping, the scratch-tree sync (no kernel build)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.core.errors import UsageError
from orchestrator.kernels import images
from orchestrator.kernels.kbuild import (
    BuildError,
    apply_patches,
    config_values,
    default_fragments,
    missing_options,
    patched_paths,
    sync_tree,
    wanted_options,
)

PATCH = """--- a/dir/f.c
+++ b/dir/f.c
@@ -1,2 +1,2 @@
 one
-two
+TWO
"""


def test_fragments_ask_for_what_the_probe_needs() -> None:
    want = wanted_options(default_fragments())
    for opt in ("CONFIG_VIRTIO_NET", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_DYNAMIC_FTRACE",
                "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS", "CONFIG_KPROBES", "CONFIG_DEBUG_INFO_DWARF5",
                "CONFIG_BLK_DEV_INITRD", "CONFIG_SMP", "CONFIG_MODULES"):
        assert want[opt] == "y", opt
    assert want["CONFIG_LOCALVERSION_AUTO"] == "n"


def test_fragment_lines_are_commented(tmp_path: Path) -> None:
    for frag in default_fragments():
        lines = frag.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("CONFIG_") or (line.startswith("# CONFIG_") and "is not set" in line):
                assert i > 0 and lines[i - 1].startswith("#"), f"{frag.name}: {line} has no comment"


def test_missing_options() -> None:
    have = config_values("CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_N=8\n")
    assert missing_options({"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "y", "CONFIG_D": "n",
                            "CONFIG_N": "8"}, have) == ["CONFIG_B=y (got m)", "CONFIG_C=y (got n)"]


def test_patched_paths(tmp_path: Path) -> None:
    p = tmp_path / "x.patch"
    p.write_text("Subject: x\n\n" + PATCH)
    assert patched_paths(p) == ["dir/f.c"]


def _tree(root: Path) -> None:
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "f.c").write_text("one\ntwo\n")
    (root / "g.c").write_text("g\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref\n")


def test_sync_patch_and_restore(tmp_path: Path) -> None:
    src, tree, state = tmp_path / "src", tmp_path / "tree", tmp_path / "state.json"
    _tree(src)
    sync_tree(src, tree, state)
    assert (tree / "g.c").read_text() == "g\n" and not (tree / ".git").exists()
    patch = tmp_path / "p.patch"
    patch.write_text(PATCH)
    apply_patches(tree, [patch], state)
    assert (tree / "dir" / "f.c").read_text() == "one\nTWO\n"
    assert (src / "dir" / "f.c").read_text() == "one\ntwo\n"  # the user's tree is untouched
    untouched = os.stat(tree / "g.c").st_mtime_ns
    # next build without the patch: the patched file comes back, the others keep their mtime
    assert sync_tree(src, tree, state) == 1
    assert (tree / "dir" / "f.c").read_text() == "one\ntwo\n"
    assert os.stat(tree / "g.c").st_mtime_ns == untouched
    # a change and a removal in the source follow
    (src / "g.c").write_text("g2\n")
    (src / "dir" / "f.c").unlink()
    sync_tree(src, tree, state)
    assert (tree / "g.c").read_text() == "g2\n" and not (tree / "dir" / "f.c").exists()
    assert json.loads(state.read_text())["patched"] == []


def test_patch_that_does_not_apply(tmp_path: Path) -> None:
    src, tree, state = tmp_path / "src", tmp_path / "tree", tmp_path / "state.json"
    _tree(src)
    (src / "dir" / "f.c").write_text("other\ncontent\n")
    sync_tree(src, tree, state)
    patch = tmp_path / "p.patch"
    patch.write_text(PATCH)
    with pytest.raises(BuildError, match="does not apply"):
        apply_patches(tree, [patch], state)
    assert not list(tree.rglob("*.rej")) and not list(tree.rglob("*.orig"))


def test_custom_kernel_unknown(tmp_path: Path) -> None:
    from orchestrator.core.errors import UsageError

    with pytest.raises(UsageError, match="built kernels: none"):
        images.custom_kernel("custom-123", tmp_path)


def _source_deb(tmp: Path, package: str, version: str, text: str) -> Path:
    """A miniature linux-source-X.Y package, built like Debian's (a tarball under /usr/src)."""
    import subprocess

    tree = tmp / "t" / package
    tree.mkdir(parents=True)
    (tree / "Makefile").write_text(text)
    root = tmp / f"root-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
    (root / "usr" / "src").mkdir(parents=True)
    subprocess.run(["tar", "-C", str(tmp / "t"), "-cJf", str(root / "usr" / "src" / f"{package}.tar.xz"),
                    package], check=True)
    deb = tmp / f"{package}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def test_source_from_deb_unpacks_once_per_version(tmp_path: Path) -> None:
    from orchestrator.kernels.kbuild import source_from_deb

    cache = tmp_path / "cache"
    old = _source_deb(tmp_path / "a", "linux-source-7.3", "7.3.4-1~bpo13+1", "VERSION = 7.3.4\n")
    tree = source_from_deb(old, cache)
    assert tree == cache / "src" / "linux-source-7.3"
    assert (tree / "Makefile").read_text() == "VERSION = 7.3.4\n"
    (tree / "Makefile").write_text("touched")          # same version: kept as it is
    assert (source_from_deb(old, cache) / "Makefile").read_text() == "touched"
    new = _source_deb(tmp_path / "b", "linux-source-7.3", "7.3.5-1", "VERSION = 7.3.5\n")
    assert (source_from_deb(new, cache) / "Makefile").read_text() == "VERSION = 7.3.5\n"
    assert [p.name for p in (cache / "src").iterdir() if p.name.startswith(".linux-source-7.3.deb")] == []


def test_source_from_deb_refuses_other_files(tmp_path: Path) -> None:
    from orchestrator.kernels.kbuild import source_from_deb

    other = tmp_path / "linux-image-7.3_1_amd64.deb"
    other.write_text("x")
    with pytest.raises(UsageError):
        source_from_deb(other, tmp_path)
