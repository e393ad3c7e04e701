"""The guest initramfs: busybox + dropbear from Debian .debs, virtio modules, our /init.

Everything in the image comes from .deb files unpacked with ``dpkg -x`` (never from the
host's /bin or /lib). The image is named by a hash of all its inputs, so a changed input
gives a new image and an unchanged one is found again in well under a second.

Layout under ``<cache>``::

    ssh/id_ed25519{,.pub}               throwaway client key (OpenSSH format, 0600)
    ssh/dropbear_ed25519_host_key       guest host key (dropbear format)
    rootfs/pkgs/<deb file stem>/        unpacked packages
    initramfs/initramfs-<release>-<hash>.cpio

The image is not compressed: under TCG the kernel's gzip inflate of it took 0.25-0.35 s
of every boot (about 7 MB), its plain unpack 0.07 s; QEMU loads the bigger file into guest
memory by fw_cfg DMA in a few ms.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from ..core.errors import InfraError, UsageError
from ..host.apt import Apt, deb_depends
from ..host.cache import file_lock, images_dir
from .images import KernelArtifacts, _run

log = logging.getLogger(__name__)

FORMAT = "pokelab-initramfs-2"
ROOT_PACKAGES = ("busybox-static", "dropbear-bin")
#: the suite of pokelab's apt sources the guest's packages come from, whatever the host runs
ROOT_SUITE = "bookworm"
GUEST_BINARIES = ("bin/busybox", "usr/sbin/dropbear")
#: both virtio transports (``pc``: PCI, ``microvm``: virtio-mmio); the init loads the one whose bus
#: has virtio devices
GUEST_MODULES = ("virtio_pci", "virtio_mmio", "virtio_net", "virtio_rng")
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")
KEY_NAME = "id_ed25519"
HOST_KEY_NAME = "dropbear_ed25519_host_key"

_ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\ntty:x:5:\n",
    "etc/shells": "/bin/sh\n/bin/ash\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
    "etc/hosts": "127.0.0.1 localhost\n10.0.2.15 pokelab\n",
    "etc/resolv.conf": "nameserver 10.0.2.3\n",
    "etc/profile": "export PATH=/sbin:/usr/sbin:/bin:/usr/bin\n",
}
_DIRS = ("proc", "sys", "dev", "run", "tmp", "mnt", "var", "root/.ssh", "etc/dropbear")


# --------------------------------------------------------------------------- keys


def ensure_ssh_key(cache: Path) -> Path:
    """The throwaway ed25519 client key (OpenSSH private key, mode 0600); ``.pub`` beside it."""
    key = cache / "ssh" / KEY_NAME
    pub = key.with_name(KEY_NAME + ".pub")
    if key.is_file() and pub.is_file():
        return key
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(key.parent, 0o700)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    tmp = key.with_name(f".{KEY_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub.write_bytes(public + b" pokelab\n")
    os.replace(tmp, key)
    log.info("generated SSH key %s", key)
    return key


def _ensure_host_key(cache: Path, roots: list[Path]) -> Path:
    """Dropbear's ed25519 host key, made on the host with the unpacked dropbearkey."""
    key = cache / "ssh" / HOST_KEY_NAME
    if key.is_file():
        return key
    keygen = _find_in_roots(roots, "usr/bin/dropbearkey")
    interp = _find_in_roots(roots, "lib64/ld-linux-x86-64.so.2")
    libpath = ":".join(str(r / d) for r in roots for d in LIB_DIRS if (r / d).is_dir())
    key.parent.mkdir(parents=True, exist_ok=True)
    tmp = key.with_name(f".{HOST_KEY_NAME}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    _run([interp, "--library-path", libpath, keygen, "-t", "ed25519", "-f", tmp], "dropbearkey")
    os.chmod(tmp, 0o600)
    os.replace(tmp, key)
    return key


# --------------------------------------------------------------------------- packages


def _package_debs(apt: Apt) -> list[Path]:
    """The root packages plus the closure of their library dependencies (lib*, zlib*)."""
    seen: dict[str, Path] = {}
    todo = list(ROOT_PACKAGES)
    while todo:
        for pkg, deb in zip(todo, apt.debs(todo, ROOT_SUITE), strict=True):
            seen[pkg] = deb
        nxt = []
        for pkg in todo:
            for dep in deb_depends(seen[pkg]):
                if dep.startswith(("lib", "zlib")) and dep not in seen and dep not in nxt:
                    nxt.append(dep)
        todo = nxt
    return sorted(seen.values())


def _unpacked(deb: Path, cache: Path) -> Path:
    root = cache / "rootfs" / "pkgs" / deb.stem
    if root.is_dir():
        return root
    tmp = root.with_name(f".{deb.stem}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _run(["dpkg", "-x", deb, tmp], f"dpkg -x {deb.name}")
    os.replace(tmp, root)
    return root


def _resolve(root: Path, rel: str) -> Path | None:
    """The regular file ``rel`` names inside ``root``, following symlinks inside ``root``
    (absolute link targets are root-relative); None if there is none."""
    todo = [p for p in PurePosixPath(rel).parts if p not in ("/", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        host = root.joinpath(*done, part)
        if host.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            todo = [p for p in PurePosixPath(target).parts if p not in ("/", ".")] + todo
            continue
        done.append(part)
    host = root.joinpath(*done)
    return host if host.is_file() else None


def _find_in_roots(roots: Iterable[Path], rel: str) -> Path:
    for root in roots:
        found = _resolve(root, rel)
        if found is not None:
            return found
    raise InfraError(f"{rel} not found in the unpacked packages")


def _elf_deps(path: Path) -> tuple[list[str], str | None]:
    """(DT_NEEDED sonames, PT_INTERP) of an ELF file."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            interp = None
            for seg in elf.iter_segments():
                if isinstance(seg, InterpSegment):
                    interp = seg.get_interp_name()
            dyn = elf.get_section_by_name(".dynamic")
            needed = (
                [t.needed for t in dyn.iter_tags("DT_NEEDED")]  # type: ignore[attr-defined]
                if isinstance(dyn, DynamicSection)
                else []
            )
            return needed, interp
    except ELFError as exc:
        raise InfraError(f"{path.name}: not a readable ELF file ({exc})") from exc


def _guest_files(roots: list[Path]) -> dict[str, Path]:
    """Guest path -> host file for the binaries and every shared library they need."""
    files: dict[str, Path] = {}
    todo = [(rel, _find_in_roots(roots, rel)) for rel in GUEST_BINARIES]
    while todo:
        rel, host = todo.pop()
        if rel in files:
            continue
        files[rel] = host
        needed, interp = _elf_deps(host)
        if interp:
            todo.append((interp.lstrip("/"), _find_in_roots(roots, interp.lstrip("/"))))
        for soname in needed:
            for d in LIB_DIRS:
                found = next((p for r in roots if (p := _resolve(r, f"{d}/{soname}"))), None)
                if found is not None:
                    todo.append((f"{d}/{soname}", found))
                    break
            else:
                raise InfraError(f"{host.name} needs {soname}, not found in the unpacked packages")
    return files


# --------------------------------------------------------------------------- modules


def _module_closure(modules_dir: Path, names: Iterable[str]) -> list[str]:
    """Paths (relative to modules_dir) of ``names`` and their dependencies, from modules.dep."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    dep_file = modules_dir / "modules.dep"
    if not dep_file.is_file():
        raise InfraError(f"{dep_file} is missing (run depmod)")
    for line in dep_file.read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod] = rest.split()
        by_name[PurePosixPath(mod).name.split(".ko")[0].replace("-", "_")] = mod
    out: list[str] = []
    todo = [by_name[n] for n in names if n in by_name]
    while todo:
        mod = todo.pop()
        if mod not in out:
            out.append(mod)
            todo.extend(deps.get(mod, []))
    return sorted(out)


def _copy_module(src: Path, dest: Path) -> None:
    """Copy one module, decompressed (``.ko.xz``/``.ko.gz``/``.ko.zst`` -> ``.ko``): busybox's
    modprobe loads plain ``.ko`` files only (Debian ships .ko.xz since 6.12)."""
    name = dest.name
    for suffix in (".xz", ".gz", ".zst"):
        if name.endswith(".ko" + suffix):
            out = dest.with_name(name[: -len(suffix)])
            out.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".xz":
                out.write_bytes(lzma.decompress(src.read_bytes()))
            elif suffix == ".gz":
                out.write_bytes(gzip.decompress(src.read_bytes()))
            else:
                _run(["zstd", "-d", "-q", "-f", "-o", out, src], f"zstd -d {src.name}")
            os.chmod(out, 0o644)
            return
    _copy(src, dest, 0o644)


# --------------------------------------------------------------------------- cpio


def _newc(ino: int, mode: int, name: str, data: bytes, rdev: tuple[int, int] = (0, 0)) -> bytes:
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08x" % v for v in fields) + name.encode() + b"\x00"
    head += b"\x00" * (-len(head) % 4)
    return head + data + b"\x00" * (-len(data) % 4)


def _write_cpio(tree: Path, out: Path) -> None:
    """An uncompressed newc cpio of ``tree`` (owner root, mtime 0) plus /dev/console."""
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            host = Path(dirpath) / name
            entries.append((host.relative_to(tree).as_posix(), host))
    entries.sort()
    with open(out, "wb") as out_f:
        ino = 1
        for name, host in entries:
            st = host.lstat()
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(host).encode()
            elif stat.S_ISREG(st.st_mode):
                data = host.read_bytes()
            else:
                data = b""
            out_f.write(_newc(ino, st.st_mode, name, data))
            ino += 1
        out_f.write(_newc(ino, stat.S_IFCHR | 0o600, "dev/console", b"", (5, 1)))
        out_f.write(_newc(0, 0, "TRAILER!!!", b""))


# --------------------------------------------------------------------------- assembly


def _check_extra(extra_files: Mapping[str, Path]) -> dict[str, Path]:
    out = {}
    for guest, host in extra_files.items():
        p = PurePosixPath(guest)
        if not p.is_absolute() or ".." in p.parts or len(p.parts) < 2:
            raise UsageError(f"guest path '{guest}' must be absolute, without '..'")
        host = Path(host)
        if not host.is_file():
            raise UsageError(f"extra file {host} (for {guest}) does not exist")
        out[str(p).lstrip("/")] = host
    return out


def _digest(h: hashlib._Hash, label: str, data: bytes) -> None:
    h.update(f"{label}\0{len(data)}\0".encode())
    h.update(data)


def ensure_initramfs(
    kernel: KernelArtifacts,
    cache: Path,
    extra_files: Mapping[str, Path] | None = None,
) -> Path:
    """An uncompressed newc initramfs for ``kernel``; rebuilt whenever any input changes.

    ``extra_files`` maps guest paths to host files (copied with their mode).
    """
    extra = _check_extra(extra_files or {})
    key = ensure_ssh_key(cache)
    authorized = key.with_name(KEY_NAME + ".pub").read_bytes()
    init_path = images_dir() / "rootfs" / "init"
    try:
        init_text = init_path.read_bytes()
    except OSError as exc:
        raise InfraError(f"cannot read {init_path}: {exc.strerror}") from exc

    debs = _package_debs(Apt(cache))
    roots = [_unpacked(deb, cache) for deb in debs]
    host_key = _ensure_host_key(cache, roots)
    modules = _module_closure(kernel.modules_dir, GUEST_MODULES) if kernel.modules_dir else []

    h = hashlib.sha256()
    _digest(h, "format", FORMAT.encode())
    _digest(h, "code", Path(__file__).read_bytes())
    _digest(h, "release", kernel.release.encode())
    _digest(h, "init", init_text)
    _digest(h, "debs", "\n".join(d.name for d in debs).encode())
    _digest(h, "authorized_keys", authorized)
    _digest(h, "host_key", host_key.read_bytes())
    for mod in modules:
        assert kernel.modules_dir is not None
        _digest(h, f"module {mod}", (kernel.modules_dir / mod).read_bytes())
    for guest, host in sorted(extra.items()):
        _digest(h, f"extra {guest} {host.stat().st_mode & 0o7777:o}", host.read_bytes())
    out_dir = cache / "initramfs"
    out = out_dir / f"initramfs-{kernel.release}-{h.hexdigest()[:16]}.cpio"
    if out.is_file():
        return out

    with file_lock(out_dir / ".lock"):
        if out.is_file():
            return out
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as tmp:
            tree = Path(tmp) / "root"
            _assemble(tree, kernel, roots, init_text, authorized, host_key, modules, extra)
            part = Path(tmp) / "out.cpio"
            _write_cpio(tree, part)
            os.replace(part, out)
        log.info(
            "built %s (%.1f MB) in %.1fs", out.name, out.stat().st_size / 1e6, time.monotonic() - t0
        )
    return out


def _copy(src: Path, dest: Path, mode: int | None = None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    os.chmod(dest, mode if mode is not None else stat.S_IMODE(src.stat().st_mode))


def _assemble(
    tree: Path,
    kernel: KernelArtifacts,
    roots: list[Path],
    init_text: bytes,
    authorized: bytes,
    host_key: Path,
    modules: list[str],
    extra: dict[str, Path],
) -> None:
    for d in _DIRS:
        (tree / d).mkdir(parents=True, exist_ok=True)
    os.chmod(tree / "tmp", 0o1777)
    os.chmod(tree / "root", 0o700)
    os.chmod(tree / "root/.ssh", 0o700)
    for rel, text in _ETC.items():
        (tree / rel).write_text(text)
    (tree / "init").write_bytes(init_text)
    os.chmod(tree / "init", 0o755)
    (tree / "root/.ssh/authorized_keys").write_bytes(authorized)
    os.chmod(tree / "root/.ssh/authorized_keys", 0o600)
    _copy(host_key, tree / "etc/dropbear" / HOST_KEY_NAME, 0o600)

    for rel, host in _guest_files(roots).items():
        _copy(host, tree / rel)
    busybox = tree / "bin/busybox"
    applets = _run([busybox, "--list-full"], "busybox --list-full").split()
    for applet in applets:
        link = tree / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")

    if kernel.modules_dir is not None:
        mdir = tree / "lib/modules" / kernel.release
        for mod in modules:
            _copy_module(kernel.modules_dir / mod, mdir / mod)
        for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
            if (kernel.modules_dir / name).is_file():
                _copy(kernel.modules_dir / name, mdir / name, 0o644)
        _run(["depmod", "-b", tree, kernel.release], "depmod for the initramfs")

    for guest, host in extra.items():
        _copy(host, tree / guest)
    _check_no_host_leak(tree)


def _check_no_host_leak(tree: Path) -> None:
    """Every symlink in the image must stay inside it (absolute targets are guest paths)."""
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink() and not os.readlink(p).startswith("/"):
                target = (p.parent / os.readlink(p)).resolve()
                if not str(target).startswith(str(tree.resolve())):
                    raise InfraError(f"initramfs symlink {p.relative_to(tree)} leaves the image")


__all__ = ["ensure_initramfs", "ensure_ssh_key"]
