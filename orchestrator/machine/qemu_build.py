"""Building QEMU from Debian's source, for hosts whose QEMU flushes at every debug stop (qemu_binary.py).

The build (:func:`build`, ``pokelab qemu``): Debian's source package
``qemu`` :data:`DEBIAN_VERSION` (the ``+ds`` tarball: no firmware blobs, no
bundled Python wheels), fetched with ``apt-get source --download-only`` through
pokelab's own apt state (:mod:`orchestrator.host.apt`: sid's ``deb-src``; the
host's apt configuration and lists are not used or touched), configured for
what pokelab needs only (``x86_64-softmmu`` with the devices of :data:`DEVICES_MAK`,
slirp, plugins; no docs, tools, GUI, audio or USB), built with ``ninja qemu-system-x86_64``, and installed as
``<cache>/qemu/<version>/qemu-system-x86_64`` with a ``build.json`` beside it
(written last: its presence marks a complete build).  The build tree is deleted
afterwards.  The built binary uses the host's firmware: ``-L /usr/share/qemu
-L /usr/share/seabios`` (packages ``qemu-system-data`` and ``seabios``), in the order of
Debian's own QEMU (``qemu-system-x86_64 -L help``).  Host
packages it needs: the Makefile's ``QEMU_BUILD_PACKAGES`` (``make qemu`` installs them;
:func:`_missing_build_tools` names the missing ones); meson
>= 1.5 and pycotap come from PyPI into a venv in the build tree.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..core.errors import InfraError, UsageError
from ..host import procs
from ..kernels.images import file_lock
from .qemu_binary import (
    BINARY,
    BUILD_VERSION,
    HOST_DATA_DIRS,
    QemuBinary,
    built_path,
    candidates,
    choose,
    describe,
    install_dir,
    measure_flushes,
)

log = logging.getLogger(__name__)

#: The Debian source package built when the host's QEMU flushes (sid; later versions' pool
#: files were not reachable here, this one builds on Debian 12 and 13).
DEBIAN_VERSION = "1:10.2.2+ds-1"
#: Python packages for the build venv (QEMU 10.2 needs meson >= 1.5; Debian 12 has 1.0).
BUILD_PYPI = ("meson==1.12.1", "pycotap==1.3.1")
CONFIGURE_ARGS = (
    "--target-list=x86_64-softmmu", "--enable-slirp", "--enable-plugins",
    "--disable-docs", "--disable-install-blobs", "--disable-download",
    "--disable-tools", "--disable-guest-agent", "--disable-rust",
    "--disable-gtk", "--disable-sdl", "--disable-vnc", "--disable-spice", "--disable-opengl",
    "--disable-virglrenderer", "--disable-curses", "--disable-dbus-display",
    "--disable-xkbcommon", "--disable-brlapi",
    "--audio-drv-list=", "--disable-alsa", "--disable-pa", "--disable-oss", "--disable-jack",
    "--disable-pipewire", "--disable-sndio", "--disable-libusb", "--disable-usb-redir",
    "--without-default-devices", "--with-devices-x86_64=pokelab",
)
#: ``configs/devices/x86_64-softmmu/pokelab.mak``: the boards and devices pokelab's guests use
#: (``-machine pc`` or ``microvm``, ``virtio-net-pci``, ``virtio-rng-pci``, the ISA serial
#: port, the HPET of a default ``pc``); each board selects what it cannot run without.  CXL,
#: PXB (CXL depends on it), CXL_MEM_DEVICE and PCIE_PORT: 10.2's x86 ACPI selects ACPI_CXL,
#: which calls into CXL (the stubs lack ``cxl_fmws_get_all_sorted``), CXL's mailbox calls into
#: the type-3 memory device, and the CXL root port's QOM parent is ``pcie-root-port-base``;
#: only the default device set turns them on (a missing one is a link error at the end of the
#: build, or QEMU refusing to start).
#: About a fifth fewer objects to compile than QEMU's default device set.
DEVICES_MAK = """\
# pokelab: only what its guests use
CONFIG_I440FX=y
CONFIG_MICROVM=y
CONFIG_HPET=y
CONFIG_PCIE_PORT=y
CONFIG_PXB=y
CONFIG_CXL=y
CONFIG_CXL_MEM_DEVICE=y
CONFIG_SERIAL_ISA=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_MMIO=y
CONFIG_VIRTIO_NET=y
CONFIG_VIRTIO_RNG=y
"""
#: Deadlines (s).  The build took ~4.5 min on 2 cores here; a slow or busy host gets 12x.
DEADLINES = {"untar": 300.0, "pip": 300.0, "configure": 600.0, "ninja": 3600.0}


def needs_build(host: QemuBinary | None, built: QemuBinary | None) -> bool:
    """``pokelab qemu`` builds only when neither the host's nor a cached build is free of the flush."""
    return (host is None or host.flushes) and built is None



# --------------------------------------------------------------------------- building


def fetch_source(cache: Path, dest: Path, package: str = "qemu",
                 version: str = DEBIAN_VERSION) -> list[Path]:
    """Download Debian's source package ``package=version`` into ``dest``; the files fetched.

    Through pokelab's own apt state (:meth:`orchestrator.host.apt.Apt.download_source`:
    sid's ``deb-src`` in ``images/apt/sources.list``, checked against the signed Sources
    index).  InfraError if sid no longer lists that version.
    """
    from ..host.apt import Apt

    try:
        return Apt(cache).download_source(package, dest, version)
    except UsageError as exc:
        raise InfraError(f"cannot download the source package {package}={version} from sid "
                         f"(is it still listed? `pokelab qemu` pins it): {exc.title}") from None


def _missing_build_tools() -> list[str]:
    need = {"ninja": "ninja-build", "pkg-config": "pkg-config", "cc": "gcc", "make": "make",
            "dtc": "device-tree-compiler", "xz": "xz-utils"}
    missing = [pkg for tool, pkg in need.items() if shutil.which(tool) is None]
    for mod, pkg in (("glib-2.0", "libglib2.0-dev"), ("pixman-1", "libpixman-1-dev"),
                     ("slirp", "libslirp-dev")):
        if shutil.which("pkg-config") and procs.run(
                ["pkg-config", "--exists", mod], timeout=10.0, what="pkg-config",
                check=False).returncode != 0:
            missing.append(pkg)
    if not Path("/usr/include/libfdt.h").is_file():  # Debian 12's libfdt-dev has no .pc file
        missing.append("libfdt-dev")
    return missing


def disable_edk2_unpacking(meson_build: Path) -> None:
    """The ``+ds`` tarball has no edk2 firmware: keep meson from unpacking it (one line of meson.build)."""
    text = meson_build.read_text()
    old = "unpack_edk2_blobs = bzip2.found()"
    if old not in text:
        raise InfraError(f"{meson_build}: no '{old}' line to turn off (another QEMU version?)")
    meson_build.write_text(text.replace(old, "unpack_edk2_blobs = false"))


def parse_ninja_progress(line: str) -> tuple[int, int] | None:
    """``(done, total)`` from a ninja status line ``[123/1789] Compiling ...``, else None."""
    m = re.match(r"\[(\d+)/(\d+)\]", line)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _ninja(build: Path, log_path: Path, jobs: int, progress: Callable[[str], None]) -> None:
    ninja = procs.which("ninja", "ninja-build")
    with open(log_path, "wb") as out:
        child = procs.Child([ninja, "-j", str(jobs), BINARY], name="ninja (QEMU)", cwd=build,
                            stdout=out, stderr=subprocess.STDOUT)
    end = time.monotonic() + DEADLINES["ninja"]
    shown = -1
    try:
        while (rc := child.wait(5.0)) is None:
            if time.monotonic() > end:
                raise InfraError(f"the QEMU build did not finish within {DEADLINES['ninja']:.0f} s "
                                 f"(log: {log_path})")
            lines = log_path.read_bytes()[-4000:].decode(errors="replace").splitlines()
            last = next((p for p in map(parse_ninja_progress, reversed(lines)) if p), None)
            if last and last[0] * 10 // last[1] != shown:
                shown = last[0] * 10 // last[1]
                progress(f"building QEMU {BUILD_VERSION}: {last[0]}/{last[1]} steps")
    finally:
        child.close(grace=2.0)
    if rc != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-10:]
        raise InfraError(f"the QEMU build failed (status {rc}; log: {log_path})", "\n".join(tail))


def _configured_tree(work: Path, progress: Callable[[str], None]) -> Path | None:
    """The source tree of an earlier build cut short or failed, configured the same way, or None.

    ninja then goes on where it stopped (and reconfigures by itself if the device list changed).
    """
    try:
        stamp = json.loads((work / "configured.json").read_text())
    except (OSError, ValueError):
        return None
    src = work / str(stamp.get("src", "-"))
    if stamp.get("debian_version") != DEBIAN_VERSION or stamp.get("configure") != list(CONFIGURE_ARGS) \
            or not (src / "build" / "build.ninja").is_file():
        return None
    progress(f"QEMU {BUILD_VERSION}: going on with the build in {work}")
    return src


def _configure(cache: Path, work: Path, progress: Callable[[str], None]) -> Path:
    """Fetch, unpack, patch and configure the source in a new ``work``; the source tree."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    progress(f"QEMU {BUILD_VERSION}: fetching Debian's source package qemu={DEBIAN_VERSION}")
    files = fetch_source(cache, work / "dl")
    orig = next((f for f in files if f.name.endswith(".orig.tar.xz")), None)
    if orig is None:
        raise InfraError(f"the source package has no .orig.tar.xz: {[f.name for f in files]}")
    procs.run(["tar", "-xf", str(orig), "-C", str(work)], timeout=DEADLINES["untar"],
              what="tar (QEMU source)")
    src = next(p for p in work.iterdir() if p.is_dir() and p.name.startswith("qemu-"))
    disable_edk2_unpacking(src / "meson.build")
    (src / "configs" / "devices" / "x86_64-softmmu" / "pokelab.mak").write_text(DEVICES_MAK)
    progress("QEMU: meson and pycotap from PyPI into a build venv")
    venv = work / "venv"
    procs.run([sys.executable, "-m", "venv", str(venv)], timeout=DEADLINES["pip"], what="venv")
    procs.run([str(venv / "bin" / "pip"), "install", "-q", *BUILD_PYPI],
              timeout=DEADLINES["pip"], what="pip install meson pycotap")
    progress("QEMU: configure (x86_64-softmmu, slirp, plugins)")
    procs.run([str(src / "configure"), f"--python={venv / 'bin' / 'python3'}",
               f"--prefix={work / 'prefix'}", *CONFIGURE_ARGS],
              timeout=DEADLINES["configure"], what="QEMU configure", cwd=src)
    (work / "configured.json").write_text(json.dumps(
        {"debian_version": DEBIAN_VERSION, "configure": list(CONFIGURE_ARGS), "src": src.name}) + "\n")
    return src


def build(cache: Path, progress: Callable[[str], None] = lambda s: None,
          jobs: int | None = None) -> QemuBinary:
    """Build QEMU :data:`BUILD_VERSION` into ``<cache>/qemu/<version>/`` once (file lock); its binary.

    A second caller waits on the lock and then finds the build done.  InfraError
    (with the log tail) when a step fails; the build tree is then kept, and the next
    call goes on from it (same source and configure arguments) instead of starting over.
    """
    qdir = cache / "qemu"
    with file_lock(qdir / ".build.lock"):
        done = built_path(cache)
        if done is not None:
            return describe(done, "built", cache, HOST_DATA_DIRS)
        missing = _missing_build_tools()
        if missing:
            raise InfraError("building QEMU needs the Debian packages: " + " ".join(missing)
                             + " (`make qemu` installs them)")
        t0 = time.monotonic()
        work = qdir / f".build-{BUILD_VERSION}"
        src = _configured_tree(work, progress) or _configure(cache, work, progress)
        (src / "configs" / "devices" / "x86_64-softmmu" / "pokelab.mak").write_text(DEVICES_MAK)
        _ninja(src / "build", work / "ninja.log", jobs or os.cpu_count() or 2, progress)
        dest = install_dir(cache)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        shutil.copy2(src / "build" / BINARY, dest / BINARY)
        # the binary must start, boot SeaBIOS and stop without a flush before it counts as built
        flushes = measure_flushes(dest / BINARY, HOST_DATA_DIRS, work / "flush-probe")
        if flushes:
            raise InfraError(f"the QEMU just built still flushes at a debug stop ({flushes:g} per stop)")
        built = describe(dest / BINARY, "built", cache, HOST_DATA_DIRS)
        seconds = round(time.monotonic() - t0, 1)
        (dest / "build.json").write_text(json.dumps({
            "debian_version": DEBIAN_VERSION, "version": built.version, "build_s": seconds,
            "configure": list(CONFIGURE_ARGS), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tb_flushes_per_stop": built.tb_flushes_per_stop}, indent=2) + "\n")
        shutil.rmtree(work)
        progress(f"QEMU {built.version} built in {seconds:.0f} s: {dest / BINARY}")
        return QemuBinary(dest / BINARY, built.version, "built", HOST_DATA_DIRS,
                          built.tb_flushes_per_stop)


def ensure_fast(cache: Path, progress: Callable[[str], None] = lambda s: None,
                jobs: int | None = None) -> QemuBinary:
    """``pokelab qemu``: a QEMU whose gdbstub does not flush, building one if needed."""
    host, built = candidates(cache)
    if not needs_build(host, built):
        return choose(None, host, built)
    return build(cache, progress, jobs)
