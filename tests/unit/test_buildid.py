"""ELF note and bzImage header parsers, on real files from this host."""

from __future__ import annotations

import gzip
import io
import lzma
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from fakekernel import fake_bzimage

from orchestrator.core import buildid
from orchestrator.core.errors import UsageError
from orchestrator.kernels.images import artifacts_from_paths, decompress_payload

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

