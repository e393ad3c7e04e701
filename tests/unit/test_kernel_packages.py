"""How a Debian kernel's packages become a kernel dir, and its modules an initramfs's.

Both image layouts Debian has used: up to 6.x one ``linux-image-<rel>`` with
``/boot/vmlinuz-<rel>`` and ``/lib/modules/<rel>``; since 7.x an empty
``linux-image-<rel>`` depending on ``linux-binary-<rel>`` (``/usr/lib/modules/<rel>/vmlinuz``),
``linux-modules-<rel>`` and ``linux-base-<rel>`` (System.map, config).  The packages
here are built with dpkg-deb from those file lists (tests/data/apt/apt-cache-show-7.x.txt
has the real records).
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.kernels.images import _lay_out_image
from orchestrator.kernels.rootfs import _copy_module, _module_closure

REL = "7.3.4+deb13-amd64"
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="no dpkg-deb here")


def _deb(tmp: Path, name: str, files: dict[str, bytes]) -> Path:
    root = tmp / f"root-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1\nArchitecture: amd64\nMaintainer: x <x@x>\nDescription: x\n")
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    out = tmp / f"{name}_1_amd64.deb"
    subprocess.run(["dpkg-deb", "-b", "-Zgzip", str(root), str(out)], check=True, capture_output=True)
    return out


def _check(staging: Path, rel: str) -> None:
    for name in ("vmlinuz", "System.map", "config"):
        assert (staging / "boot" / f"{name}-{rel}").read_bytes() == name.encode()
    assert (staging / "lib" / "modules" / rel / "kernel" / "m.ko.xz").is_file()
    assert not (staging / "pkgroot").exists()


@needs_dpkg
def test_split_7x_layout(tmp_path: Path) -> None:
    m = f"usr/lib/modules/{REL}"
    debs = [_deb(tmp_path, f"linux-image-{REL}", {f"usr/share/doc/linux-image-{REL}/x": b""}),
            _deb(tmp_path, f"linux-base-{REL}", {f"{m}/System.map": b"System.map", f"{m}/config": b"config"}),
            _deb(tmp_path, f"linux-binary-{REL}", {f"{m}/vmlinuz": b"vmlinuz"}),
            _deb(tmp_path, f"linux-modules-{REL}", {f"{m}/kernel/m.ko.xz": b"m"})]
    _lay_out_image(debs, tmp_path / "staging", REL)
    _check(tmp_path / "staging", REL)


@needs_dpkg
def test_one_package_6x_layout(tmp_path: Path) -> None:
    rel = "6.1.0-57-cloud-amd64"
    deb = _deb(tmp_path, f"linux-image-{rel}", {
        f"boot/vmlinuz-{rel}": b"vmlinuz", f"boot/System.map-{rel}": b"System.map",
        f"boot/config-{rel}": b"config", f"lib/modules/{rel}/kernel/m.ko.xz": b"m"})
    _lay_out_image([deb], tmp_path / "staging", rel)
    _check(tmp_path / "staging", rel)


def test_modules_closure_and_decompression(tmp_path: Path) -> None:
    mods = tmp_path / "lib" / "modules" / REL
    net = "kernel/drivers/net"
    (mods / net).mkdir(parents=True)
    for name in ("virtio_net", "net_failover", "failover"):
        (mods / net / f"{name}.ko.xz").write_bytes(lzma.compress(f"ELF {name}".encode()))
    # depmod's modules.dep of a 7.x generic kernel: virtio_pci is built in there
    (mods / "modules.dep").write_text(
        f"{net}/virtio_net.ko.xz: {net}/net_failover.ko.xz {net}/failover.ko.xz\n"
        f"{net}/net_failover.ko.xz: {net}/failover.ko.xz\n{net}/failover.ko.xz:\n")
    got = _module_closure(mods, ("virtio_pci", "virtio_net", "virtio_rng"))
    assert got == [f"{net}/failover.ko.xz", f"{net}/net_failover.ko.xz", f"{net}/virtio_net.ko.xz"]
    out = tmp_path / "initramfs" / "lib" / "modules" / REL
    for mod in got:
        _copy_module(mods / mod, out / mod)
    assert (out / net / "virtio_net.ko").read_bytes() == b"ELF virtio_net"
    assert not list(out.rglob("*.xz"))
