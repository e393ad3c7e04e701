"""ELF note and bzImage header parsers, on real files from this host."""

from __future__ import annotations

import gzip
import io
import lzma
import re
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from fakekernel import fake_bzimage, fake_vmlinux, write_pair

from orchestrator.core import buildid
from orchestrator.core.errors import UsageError
from orchestrator.kernels.images import artifacts_from_paths, decompress_payload, has_virtio_mmio
from orchestrator.kernels.pvh import pvh_image

TRUE = Path(shutil.which("true") or "/bin/true").resolve()


def _readelf_build_id(path: Path) -> str:
    out = subprocess.run(
        ["readelf", "-n", str(path)], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Build ID: ([0-9a-f]+)", out)
    assert match, out
    return match.group(1)


def test_build_id_matches_readelf() -> None:
    with open(TRUE, "rb") as f:
        assert buildid.elf_build_id(f) == _readelf_build_id(TRUE)


def test_build_id_from_segments_only() -> None:
    """With the section headers gone, the PT_NOTE fallback finds the same id."""
    data = bytearray(TRUE.read_bytes())
    struct.pack_into("<Q", data, 0x28, 0)  # e_shoff
    struct.pack_into("<HH", data, 0x3C, 0, 0)  # e_shnum, e_shstrndx
    assert buildid.section_names(io.BytesIO(bytes(data))) == []
    assert buildid.elf_build_id(io.BytesIO(bytes(data))) == _readelf_build_id(TRUE)


def test_section_names() -> None:
    with open(TRUE, "rb") as f:
        names = buildid.section_names(f)
    assert ".text" in names and ".note.gnu.build-id" in names
    assert ".debug_info" not in names


def test_not_elf() -> None:
    with pytest.raises(buildid.ParseError):
        buildid.elf_build_id(io.BytesIO(b"#!/bin/sh\n" * 20))


def test_setup_header_and_payload_formats() -> None:
    elf = TRUE.read_bytes()
    trailer = struct.pack("<I", len(elf))
    for fmt, payload in (
        ("gzip", gzip.compress(elf)),
        ("xz", lzma.compress(elf, lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + trailer),
        ("lzma", lzma.compress(elf, lzma.FORMAT_ALONE) + trailer),
    ):
        image = fake_bzimage(payload)
        header = buildid.parse_setup_header(image)
        assert header.release == "6.9.9-test"
        assert header.payload_start == 4 * 512 + 16
        got = buildid.payload_bytes(image, header)
        assert buildid.detect_compression(got) == fmt
        assert buildid.size_trailer(got) == len(elf)
        assert decompress_payload(got) == elf


def test_setup_header_rejects_non_bzimage() -> None:
    with pytest.raises(buildid.ParseError, match="HdrS"):
        buildid.parse_setup_header(TRUE.read_bytes())
    with pytest.raises(buildid.ParseError, match="unknown bzImage payload"):
        buildid.detect_compression(b"\x00\x01\x02\x03\x04\x05")


def test_artifacts_from_paths_errors(tmp_path: Path) -> None:
    bz = tmp_path / "bzImage"
    bz.write_bytes(fake_bzimage(gzip.compress(TRUE.read_bytes())))
    with pytest.raises(UsageError, match="does not exist"):
        artifacts_from_paths(bz, tmp_path / "vmlinux")
    with pytest.raises(UsageError, match=r"no \.debug_info"):
        artifacts_from_paths(bz, TRUE)



def test_pvh_entry_note() -> None:
    """The Xen PHYS32_ENTRY note QEMU boots an ELF kernel through; absent from a program."""
    assert buildid.pvh_entry(io.BytesIO(fake_vmlinux(bytes(20), pvh_entry=0x1000850))) == 0x1000850
    assert buildid.pvh_entry(io.BytesIO(fake_vmlinux(bytes(20)))) is None
    with open(TRUE, "rb") as f:
        assert buildid.pvh_entry(f) is None


def test_pvh_image(tmp_path: Path) -> None:
    """Made once beside a cached vmlinux, stripped, keeping the build-id; None without a PVH entry;
    a vmlinux outside the cache has its copy under kernels/pvh."""
    cache = tmp_path / "cache"
    bid = bytes(range(20))
    bz, vml = write_pair(cache / "kernels" / "custom-x", bid, pvh_entry=0x1000850)
    kernel = artifacts_from_paths(bz, vml)
    out = pvh_image(kernel, cache)
    assert out is not None and out.parent == vml.parent and bid.hex()[:16] in out.name
    with open(out, "rb") as f:
        assert buildid.elf_build_id(f) == bid.hex()
        assert ".debug_info" not in buildid.section_names(f)
    mtime = out.stat().st_mtime_ns
    assert pvh_image(kernel, cache) == out and out.stat().st_mtime_ns == mtime
    mine = artifacts_from_paths(*write_pair(tmp_path / "src", bid, pvh_entry=0x1000850))
    theirs = pvh_image(mine, cache)
    assert theirs is not None and theirs.parent == cache / "kernels" / "pvh"
    plain = artifacts_from_paths(*write_pair(tmp_path / "old", bid))
    assert pvh_image(plain, cache) is None


def test_has_virtio_mmio(tmp_path: Path) -> None:
    """From the config (=y or =m), else from a real System.map; None when neither is there."""
    kernel = artifacts_from_paths(*write_pair(tmp_path / "k"))
    assert has_virtio_mmio(kernel) is None
    config = tmp_path / "config"
    for line, want in (("CONFIG_VIRTIO_MMIO=m", True), ("CONFIG_VIRTIO_MMIO=y", True),
                       ("# CONFIG_VIRTIO_MMIO is not set", False)):
        config.write_text(f"CONFIG_X=y\n{line}\n")
        assert has_virtio_mmio(replace(kernel, config=config)) is want
    smap = tmp_path / "System.map"
    filler = "".join(f"ffffffff81{i:06x} t f{i}\n" for i in range(400))
    smap.write_text(filler)
    assert has_virtio_mmio(replace(kernel, system_map=smap)) is False
    smap.write_text(filler + "ffffffff83000000 t virtio_mmio_init\n")
    assert has_virtio_mmio(replace(kernel, system_map=smap)) is True
    smap.write_text("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n")
    assert has_virtio_mmio(replace(kernel, system_map=smap)) is None
