"""``pokelab kernels --remove`` on a fake cache: a kernel goes with what it made, shared things stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.core.errors import UsageError
from orchestrator.kernels import removal
from orchestrator.kernels.catalog import Catalog

REL, OTHER = "6.1.0-50-cloud-amd64", "6.1.0-51-cloud-amd64"
BID = "ab" * 20
CUSTOM_A, CUSTOM_B = "custom-00aa11bb22cc", "custom-11bb22cc33dd"


def _file(path: Path, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    k = tmp_path / "kernels"
    for rel, bid in ((REL, BID), (OTHER, "cd" * 20)):
        _file(k / rel / ".complete")
        (k / rel / "meta.json").write_text(json.dumps({"build_id": bid}))
        _file(tmp_path / "modules" / rel / "0123456789abcdef" / "pokelab_ops.ko", 1000)
        _file(tmp_path / "initramfs" / f"initramfs-{rel}-0123456789abcdef.cpio.gz", 1000)
        _file(tmp_path / "initramfs" / f"initramfs-{rel}-fedcba9876543210.cpio", 1000)  # uncompressed
    reg = {}
    for kid in (CUSTOM_A, CUSTOM_B):
        bid = kid.removeprefix("custom-") + "0" * 28
        _file(k / kid / "vmlinux", 1000)
        reg[kid] = {"dir": str(k / kid), "release": "7.3.4", "build_id": bid}
        _file(tmp_path / "modules" / f"7.3.4-{bid[:12]}" / "0123456789abcdef" / "pokelab_ops.ko")
        _file(tmp_path / "symbols" / f"{bid}.map")
    (k / "custom.json").write_text(json.dumps(reg))
    _file(tmp_path / "initramfs" / "initramfs-7.3.4-fedcba9876543210.cpio.gz")
    _file(tmp_path / "debs" / f"linux-image-{REL}_6.1.176-1_amd64.deb", 1000)
    _file(tmp_path / "debs" / f"linux-headers-{REL}_6.1.176-1_amd64.deb", 100)
    _file(tmp_path / "debs" / "linux-headers-6.1.0-50-common_6.1.176-1_all.deb", 100)
    bdebs = tmp_path / "buildroots" / "debs"
    for name in (f"linux-headers-{REL}_6.1.176-1", "linux-headers-6.1.0-50-common_6.1.176-1",
                 "linux-kbuild-6.1_6.1.177-1", f"linux-headers-{OTHER}_6.1.177-1"):
        _file(bdebs / name / "usr" / "src" / "Makefile", 100)
    _file(tmp_path / "buildroots" / "bookworm-0123456789ab" / "root" / "usr" / "bin" / "gcc-12", 5000)
    _file(tmp_path / "symbols" / f"{BID}.map", 100)
    _file(tmp_path / "census" / f"{BID}.json", 100)
    return tmp_path


def _names(paths: tuple[Path, ...], cache: Path) -> set[str]:
    return {str(p.relative_to(cache)) for p in paths}


def test_a_debian_kernel_goes_with_what_it_made(cache: Path) -> None:
    plan = removal.plan(["6.1.0-50"], Catalog.load(), cache)
    assert [r.name for r in plan.removals] == [REL]
    assert _names(plan.removals[0].paths, cache) == {
        f"modules/{REL}", f"debs/linux-headers-{REL}_6.1.176-1_amd64.deb",
        f"buildroots/debs/linux-headers-{REL}_6.1.176-1", f"symbols/{BID}.map", f"census/{BID}.json",
        f"initramfs/initramfs-{REL}-0123456789abcdef.cpio.gz",
        f"initramfs/initramfs-{REL}-fedcba9876543210.cpio"}
    kept = {k.what.split(" (")[0]: _names(k.paths, cache) for k in plan.kept}
    assert kept == {
        "build roots": {"buildroots/bookworm-0123456789ab"},
        "header trees shared by an ABI's flavours": {
            "buildroots/debs/linux-headers-6.1.0-50-common_6.1.176-1",
            "buildroots/debs/linux-kbuild-6.1_6.1.177-1"}}
    assert [k.size for k in plan.kept] == [5000, 200]

    freed = removal.carry_out(plan.removals[0], cache)
    # kernel dir (.complete + meta.json), image .deb, module, headers .deb and tree, 2 initramfs,
    # symbols, census
    meta = len(json.dumps({"build_id": BID}))
    assert freed == 10 + meta + 1000 + 1000 + 100 + 100 + 1000 + 1000 + 100 + 100
    assert not (cache / "kernels" / REL).exists() and not (cache / "modules" / REL).exists()
    assert (cache / "modules" / OTHER).is_dir() and (cache / "kernels" / OTHER / ".complete").is_file()
    assert (cache / "buildroots" / "debs" / f"linux-headers-{OTHER}_6.1.177-1").is_dir()
    assert (cache / "debs" / "linux-headers-6.1.0-50-common_6.1.176-1_all.deb").is_file()


def test_an_initramfs_shared_by_release_stays_while_a_kernel_of_it_does(cache: Path) -> None:
    shared = cache / "initramfs" / "initramfs-7.3.4-fedcba9876543210.cpio.gz"
    plan = removal.plan([CUSTOM_A], Catalog.load(), cache)
    assert _names(plan.removals[0].paths, cache) == {
        "modules/7.3.4-00aa11bb22cc", f"symbols/{CUSTOM_A.removeprefix('custom-')}{'0' * 28}.map"}
    removal.carry_out(plan.removals[0], cache)
    assert shared.is_file() and (cache / "modules" / "7.3.4-11bb22cc33dd").is_dir()
    assert set(json.loads((cache / "kernels" / "custom.json").read_text())) == {CUSTOM_B}

    plan = removal.plan(["built"], Catalog.load(), cache)
    assert [r.name for r in plan.removals] == [CUSTOM_B]
    assert "initramfs/initramfs-7.3.4-fedcba9876543210.cpio.gz" in _names(plan.removals[0].paths, cache)
    removal.carry_out(plan.removals[0], cache)
    assert not shared.exists() and not (cache / "kernels" / CUSTOM_B).exists()


def test_planning_deletes_nothing_and_refuses_unknown_names(cache: Path) -> None:
    before = sorted(str(p) for p in cache.rglob("*"))
    removal.plan(["built", "6.1.0-50"], Catalog.load(), cache)
    for name, needle in (("custom-ffff", "was built here"), ("6.1.0-52", "never fetched here")):
        with pytest.raises(UsageError, match=needle):
            removal.plan([name], Catalog.load(), cache)
    assert sorted(str(p) for p in cache.rglob("*")) == before
