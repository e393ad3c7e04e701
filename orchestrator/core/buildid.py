"""Pure parsers: the x86 boot setup header of a bzImage, and ELF notes/sections.

No I/O beyond the file object or bytes handed in; decompression lives in images.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

NT_GNU_BUILD_ID = 3
#: the Xen note whose 32-bit physical address is the kernel's PVH entry (QEMU boots an ELF kernel there)
XEN_ELFNOTE_PHYS32_ENTRY = 18
SHT_NOTE = 7
SHT_NOBITS = 8
PT_NOTE = 4

# Magic prefixes of the payload formats the kernel's boot decompressor supports.
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x02\x21\x4c\x18", "lz4"),  # lz4 legacy frame (lz4 -l)
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x89LZO", "lzo"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x7fELF", "none"),
)


class ParseError(ValueError):
    """The bytes are not what the parser expects; the message is one line."""


@dataclass(frozen=True)
class SetupHeader:
    """The fields of the x86 boot protocol header pokelab needs."""

    setup_sects: int
    protocol: int  # e.g. 0x020f
    payload_offset: int  # relative to the start of the protected-mode code
    payload_length: int
    kernel_version: str  # "6.1.0-56-cloud-amd64 (debian-kernel@...) #1 SMP ..."

    @property
    def protected_mode_offset(self) -> int:
        """File offset where the protected-mode kernel (compressed stub) starts."""
        return (self.setup_sects + 1) * 512

    @property
    def payload_start(self) -> int:
        return self.protected_mode_offset + self.payload_offset

    @property
    def release(self) -> str:
        """First word of the version string: what ``uname -r`` prints."""
        return self.kernel_version.split(" ", 1)[0]


def parse_setup_header(data: bytes) -> SetupHeader:
    """Parse the boot setup header at the start of a bzImage."""
    if len(data) < 0x260 or data[0x202:0x206] != b"HdrS":
        raise ParseError("not a bzImage (no 'HdrS' boot header)")
    protocol = struct.unpack_from("<H", data, 0x206)[0]
    if protocol < 0x0208:
        raise ParseError(f"boot protocol {protocol:#06x} is too old (no payload fields)")
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    version = ""
    ptr = struct.unpack_from("<H", data, 0x20E)[0]
    if ptr:
        start = 0x200 + ptr
        end = data.find(b"\x00", start, start + 512)
        if end > start:
            version = data[start:end].decode("ascii", "replace")
    header = SetupHeader(setup_sects, protocol, payload_offset, payload_length, version)
    if header.payload_start + payload_length > len(data) or payload_length < 8:
        raise ParseError("bzImage payload lies outside the file (truncated image?)")
    return header


def payload_bytes(data: bytes, header: SetupHeader | None = None) -> bytes:
    """The compressed kernel payload of a bzImage."""
    header = header or parse_setup_header(data)
    return data[header.payload_start : header.payload_start + header.payload_length]


def detect_compression(payload: bytes) -> str:
    """Name of the payload's compression format, from its magic bytes."""
    for magic, name in _MAGICS:
        if payload.startswith(magic):
            return name
    raise ParseError(f"unknown bzImage payload format (magic {payload[:6].hex()})")


def size_trailer(payload: bytes) -> int:
    """The uncompressed size the kernel build appends (4 bytes LE) to every payload."""
    return int(struct.unpack_from("<I", payload, len(payload) - 4)[0])


@dataclass(frozen=True)
class _Elf:
    le: str  # "<" or ">"
    is64: bool
    shoff: int
    shentsize: int
    shnum: int
    shstrndx: int
    phoff: int
    phentsize: int
    phnum: int


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ParseError("truncated ELF file")
    return data


def _elf_header(f: BinaryIO) -> _Elf:
    ident = _read_at(f, 0, 64)
    if ident[:4] != b"\x7fELF":
        raise ParseError("not an ELF file")
    if ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise ParseError("bad ELF class or byte order")
    is64 = ident[4] == 2
    le = "<" if ident[5] == 1 else ">"
    if is64:
        phoff, shoff = struct.unpack_from(le + "QQ", ident, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(le + "HHHHH", ident, 0x36)
    else:
        phoff, shoff = struct.unpack_from(le + "II", ident, 0x1C)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(le + "HHHHH", ident, 0x2A)
    return _Elf(le, is64, shoff, shentsize, shnum, shstrndx, phoff, phentsize, phnum)


@dataclass(frozen=True)
class _Section:
    name_off: int
    type: int
    offset: int
    size: int
    align: int
    addr: int = 0


def _sections(f: BinaryIO, elf: _Elf) -> list[_Section]:
    if not elf.shoff or not elf.shnum:
        return []
    raw = _read_at(f, elf.shoff, elf.shentsize * elf.shnum)
    out = []
    for i in range(elf.shnum):
        base = i * elf.shentsize
        if elf.is64:
            name, typ, _fl, addr, off, size, _link, _info, align, _es = struct.unpack_from(
                elf.le + "IIQQQQIIQQ", raw, base
            )
        else:
            name, typ, _fl, addr, off, size, _link, _info, align, _es = struct.unpack_from(
                elf.le + "IIIIIIIIII", raw, base
            )
        out.append(_Section(name, typ, off, size, align, addr))
    return out


def section_names(f: BinaryIO) -> list[str]:
    """Names of all sections of an ELF file (empty if it has no section headers)."""
    elf = _elf_header(f)
    secs = _sections(f, elf)
    if not secs or elf.shstrndx >= len(secs):
        return []
    strtab = secs[elf.shstrndx]
    table = _read_at(f, strtab.offset, strtab.size)
    names = []
    for sec in secs:
        end = table.find(b"\x00", sec.name_off)
        names.append(table[sec.name_off : end if end >= 0 else None].decode("ascii", "replace"))
    return names


def read_at_address(f: BinaryIO, addr: int, size: int) -> bytes:
    """``size`` bytes of the file's section content at link-time address ``addr`` (ParseError if none).

    For a vmlinux (KASLR off) this is what the kernel holds at ``addr`` after
    boot, for tables the kernel does not rewrite (or rewrites keeping meaning,
    such as the boot-time sorts of ``__jump_table`` and ``.static_call_sites``).
    """
    elf = _elf_header(f)
    for sec in _sections(f, elf):
        inside = sec.addr <= addr and addr + size <= sec.addr + sec.size
        if sec.type not in (SHT_NOBITS, 0) and sec.addr and inside:
            return _read_at(f, sec.offset + addr - sec.addr, size)
    raise ParseError(f"no section holds {size} bytes at {addr:#x}")


def _notes(blob: bytes, le: str, align: int) -> list[tuple[str, int, bytes]]:
    align = align if align in (4, 8) else 4

    def pad(n: int) -> int:
        return (n + align - 1) & ~(align - 1)

    out = []
    pos = 0
    while pos + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from(le + "III", blob, pos)
        pos += 12
        name = blob[pos : pos + namesz].rstrip(b"\x00").decode("ascii", "replace")
        pos += pad(namesz)
        desc = blob[pos : pos + descsz]
        pos += pad(descsz)
        if len(desc) != descsz:
            break
        out.append((name, ntype, desc))
    return out


def elf_notes(f: BinaryIO) -> list[tuple[str, int, bytes]]:
    """Every ELF note of a file, as (owner name, type, descriptor bytes), in file order.

    Reads SHT_NOTE sections (a kernel's notes live in ``.notes``, a program's build-id in
    ``.note.gnu.build-id``); falls back to PT_NOTE segments for section-less files.
    ParseError if it is not an ELF file.
    """
    elf = _elf_header(f)
    regions: list[tuple[int, int, int]] = [
        (s.offset, s.size, s.align) for s in _sections(f, elf) if s.type == SHT_NOTE
    ]
    if not regions and elf.phoff and elf.phnum:
        raw = _read_at(f, elf.phoff, elf.phentsize * elf.phnum)
        for i in range(elf.phnum):
            base = i * elf.phentsize
            if elf.is64:
                typ, _fl, off, _va, _pa, filesz, _memsz, align = struct.unpack_from(
                    elf.le + "IIQQQQQQ", raw, base
                )
            else:
                typ, off, _va, _pa, filesz, _memsz, _fl, align = struct.unpack_from(
                    elf.le + "IIIIIIII", raw, base
                )
            if typ == PT_NOTE:
                regions.append((off, filesz, align))
    return [note for off, size, align in regions for note in _notes(_read_at(f, off, size), elf.le, align)]


def elf_build_id(f: BinaryIO) -> str | None:
    """The GNU build-id (lowercase hex) of an ELF file (see :func:`elf_notes`), or None if it has none."""
    for name, ntype, desc in elf_notes(f):
        if name == "GNU" and ntype == NT_GNU_BUILD_ID and desc:
            return desc.hex()
    return None


def pvh_entry(f: BinaryIO) -> int | None:
    """The 32-bit physical PVH entry address of an ELF kernel (its Xen ``PHYS32_ENTRY`` note),
    or None if it has none (QEMU then cannot boot it with ``-kernel``)."""
    for name, ntype, desc in elf_notes(f):
        if name == "Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) >= 4:
            return int(struct.unpack_from("<I", desc)[0])
    return None


def notes_build_id(blob: bytes) -> str | None:
    """The GNU build-id in a raw little-endian note blob (e.g. a kernel's live ``__start_notes``)."""
    for name, ntype, desc in _notes(blob, "<", 4):
        if name == "GNU" and ntype == 3 and desc:
            return desc.hex()
    return None
