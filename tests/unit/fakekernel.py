"""A bzImage/vmlinux pair made in a tmp dir, for CLI tests that stop before anything boots.

The vmlinux is a minimal ELF64 (x86-64) with a ``.notes`` GNU build-id note and a
``.debug_info`` section (contents are not DWARF: nothing here reads them); the bzImage is
the boot-protocol header layout (Documentation/arch/x86/boot.rst: ``HdrS``, setup_sects,
payload_offset/length) around the gzip of that ELF, as the kernel's own build wraps vmlinux.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

SHT_PROGBITS, SHT_STRTAB, SHT_NOTE = 1, 3, 7
NT_GNU_BUILD_ID = 3
XEN_ELFNOTE_PHYS32_ENTRY = 18


def fake_bzimage(payload: bytes, version: bytes = b"6.9.9-test (me@host) #1") -> bytes:
    """A minimal image with a real boot-protocol header layout around ``payload``."""
    setup_sects = 3
    pm = (setup_sects + 1) * 512
    img = bytearray(pm + 16 + len(payload))
    img[0x1F1] = setup_sects
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x020F)
    struct.pack_into("<H", img, 0x20E, 0x300 - 0x200)
    img[0x300 : 0x300 + len(version)] = version
    struct.pack_into("<II", img, 0x248, 16, len(payload))
    img[pm + 16 :] = payload
    return bytes(img)


def fake_vmlinux(build_id: bytes, *, debug_info: bool = True, pvh_entry: int | None = None) -> bytes:
    """An ELF64 LE file with sections: null, ``.notes`` (the build-id, and a Xen PVH entry note if
    ``pvh_entry``), [``.debug_info``], ``.shstrtab``."""
    note = struct.pack("<III", 4, len(build_id), NT_GNU_BUILD_ID) + b"GNU\x00" + build_id
    if pvh_entry is not None:
        xen = struct.pack("<III", 4, 8, XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\x00"
        note += xen + struct.pack("<Q", pvh_entry)
    names = [".notes", ".debug_info", ".shstrtab"] if debug_info else [".notes", ".shstrtab"]
    shstrtab = b"\x00" + b"".join(n.encode() + b"\x00" for n in names)
    name_off = {n: shstrtab.index(n.encode() + b"\x00") for n in names}
    contents = {".notes": (SHT_NOTE, note, 4), ".debug_info": (SHT_PROGBITS, b"\x00" * 16, 1),
                ".shstrtab": (SHT_STRTAB, shstrtab, 1)}
    body = bytearray()
    headers = [bytes(64)]  # SHN_UNDEF
    for n in names:
        typ, data, align = contents[n]
        off = 64 + len(body)
        body += data + b"\x00" * (-len(data) % 8)
        headers.append(struct.pack("<IIQQQQIIQQ", name_off[n], typ, 0, 0, off, len(data), 0, 0, align, 0))
    shoff = 64 + len(body)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 0, shoff, 0, 64, 56, 0, 64,
                               len(headers), len(headers) - 1)
    return ehdr + bytes(body) + b"".join(headers)


def write_pair(where: Path, build_id: bytes = bytes(range(20)), *, vmlinux_id: bytes | None = None,
               debug_info: bool = True, pvh_entry: int | None = None) -> tuple[Path, Path]:
    """(bzImage, vmlinux) under ``where``; ``vmlinux_id`` gives the vmlinux another build-id,
    ``pvh_entry`` both a PVH entry note."""
    where.mkdir(parents=True, exist_ok=True)
    bz, vml = where / "bzImage", where / "vmlinux"
    bz.write_bytes(fake_bzimage(gzip.compress(fake_vmlinux(build_id, pvh_entry=pvh_entry))))
    vml.write_bytes(fake_vmlinux(vmlinux_id or build_id, debug_info=debug_info, pvh_entry=pvh_entry))
    return bz, vml
