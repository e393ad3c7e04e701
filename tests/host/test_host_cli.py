"""Bad input through the real ``pokelab`` CLI, where the check comes after the cached kernel.

Moved from tests/unit (issue 14): each case resolves a real Debian kernel from the cache
and builds the initramfs before it fails, so it needs ``make images``.  Nothing boots.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from clirun import assert_one_line_error, pokelab

from orchestrator.cli import main
from orchestrator.host.cache import cache_dir
from orchestrator.kernels.images import KernelArtifacts
from orchestrator.machine.qemu import QEMU


@pytest.fixture
def art(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


def test_vmlinux_build_id_mismatch_debian(art: Path, kernel_6_1: KernelArtifacts,
                                          kernel_6_12: KernelArtifacts) -> None:
    """Two real Debian kernels: the build-ids read from a compressed payload and a vmlinux differ."""
    k61, k612 = kernel_6_1, kernel_6_12
    assert k61.build_id != k612.build_id
    res = pokelab("boot", "--bzimage", str(k61.bzimage), "--vmlinux", str(k612.vmlinux),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "is not the vmlinux of", k612.build_id[:12],
                          k61.build_id[:12])


def test_vmlinux_without_debug_info_debian(art: Path, kernel_6_1: KernelArtifacts) -> None:
    true = Path(shutil.which("true") or "/bin/true")
    res = pokelab("boot", "--bzimage", str(kernel_6_1.bzimage), "--vmlinux", str(true),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "no .debug_info")


def test_qemu_missing(tmp_path: Path, art: Path, default_kernel_cached: KernelArtifacts) -> None:
    """PATH holds every host tool except QEMU: the real CLI must say which package to install."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name.startswith("qemu-system") or (bindir / name).exists():
                continue
            src = os.path.join(d, name)
            if os.path.isfile(src) and os.access(src, os.X_OK):
                (bindir / name).symlink_to(src)
    # the same cache without the QEMU `pokelab qemu` built into it
    cache = tmp_path / "cache"
    cache.mkdir()
    for entry in cache_dir().iterdir():
        if entry.name != "qemu":
            (cache / entry.name).symlink_to(entry)
    env = dict(os.environ, PATH=str(bindir), POKELAB_CACHE=str(cache))
    assert shutil.which(QEMU, path=str(bindir)) is None
    res = pokelab("boot", "--kernel", default_kernel_cached.release, "--accel", "tcg",
                  "--artifacts", str(art), env=env, artifacts=art)
    assert_one_line_error(res, "infra", QEMU, "not found", "qemu-system-x86")


@pytest.mark.parametrize("args, needle", [
    (["boot", "--smp", "0", "--dry-run"], "--smp"),
    (["boot", "--smp", "65", "--dry-run"], "--smp"),
    (["boot", "--memory", "64", "--dry-run"], "--memory"),
])
def test_bad_numbers(args: list[str], needle: str, art: Path,
                     default_kernel_cached: KernelArtifacts) -> None:
    """--smp and --memory are checked by qemu.QemuConfig, after the kernel and initramfs."""
    # the release, not the id: a catalog id's answer may be due for a refresh (a log line)
    res = pokelab(*args, "--kernel", default_kernel_cached.release, "--accel", "tcg", "--artifacts", str(art),
                  artifacts=art)
    assert_one_line_error(res, "usage", needle)


def test_repro_unsupported_scenario_writes_json_without_booting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_kernel_cached: KernelArtifacts) -> None:
    from orchestrator.run import scenarios_table

    # every scenario in the table runs here: declare one this version cannot run
    sc = replace(scenarios_table.BY_NAME["ops-one"], name="not-here",
                 unsupported="this needs a module that is not built in this version")
    monkeypatch.setitem(scenarios_table.BY_NAME, sc.name, sc)
    out = tmp_path / "v.json"
    rc = main(["repro", "not-here", "--accel", "tcg", "--artifacts", str(tmp_path / "a"),
               "--json", str(out)])
    assert rc == 2
    v = json.loads(out.read_text())
    assert v["verdict"] == "UNSUPPORTED" and "module" in v["reasons"][0]
    for key in ("scenario", "kernel", "verdict", "traps_judged", "violations", "reasons"):
        assert key in v
    assert not (tmp_path / "a" / "console.log").exists()  # never booted


def test_an_abi_the_archive_lacks_is_one_line(art: Path, default_kernel_cached: KernelArtifacts) -> None:
    """A Debian ABI that pokelab's apt lists do not hold: one usage line (no ``apt-get download``
    progress line before it), and no half-made kernel dir left in the cache."""
    res = pokelab("run-cmd", "--kernel", "6.1.0-999", "--artifacts", str(art), "--", "true", artifacts=art)
    assert_one_line_error(res, "usage", "linux-image-6.1.0-999-cloud-amd64: not in pokelab's Debian sources")
    assert not list((cache_dir() / "kernels").glob(".staging-6.1.0-999*"))


def test_bisect_dry_run_over_debian_kernels(art: Path, default_kernel_cached: KernelArtifacts) -> None:
    """``bisect --debian A..B --dry-run`` from pokelab's apt lists: the range and its kernels with -dbg,
    nothing fetched or written."""
    res = pokelab("bisect", "--scenario", "ftrace-function", "--debian", "6.1.0-47..6.1", "--artifacts",
                  str(art), "--dry-run", artifacts=art)
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert first.startswith("Debian 6.1.0-47-cloud-amd64 (")
    assert " (bad): " in first and " kernels with -dbg, about " in first
    assert not art.exists()


@pytest.mark.parametrize(("kernel", "said"), [
    ("9.9", "no Debian 9.9 cloud-amd64 kernel with -dbg in pokelab's apt sources"),
    ("6.1.0-999", "no Debian kernel 6.1.0-999-cloud-amd64 in pokelab's apt sources"),
])
def test_dry_run_refuses_a_kernel_the_lists_lack(art: Path, default_kernel_cached: KernelArtifacts,
                                                  kernel: str, said: str) -> None:
    """``--dry-run`` answers from pokelab's apt lists as they are (no update): a kernel they lack is
    refused as a real run refuses it, not shown as a placeholder."""
    res = pokelab("run-cmd", "--kernel", kernel, "--dry-run", "--artifacts", str(art), "--", "true",
                  artifacts=art)
    assert_one_line_error(res, "usage", said)
    assert not art.exists()
