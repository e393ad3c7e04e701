"""Which QEMU pokelab runs, and a build of one when the host's costs too much per debug stop.

Why: QEMU's gdbstub flushed the whole TCG translation cache on every debug stop
(``gdb_vm_state_change()`` -> ``tb_flush()`` for ``RUN_STATE_DEBUG``: a
breakpoint hit, and again after GDB's step-over), so every trap the probe takes
makes the guest re-translate all the code it runs next.  Upstream removed that
flush in commit dae1e0df49d4 ("gdbstub: Remove tb_flush uses"), first released
in QEMU 10.2.  Debian 12's QEMU 7.2 and bookworm-backports' 10.0.2 still flush.

What is "fast" is measured, not guessed from the version: :func:`measure_flushes`
starts the binary paused with no guest kernel (the BIOS runs), single-steps it
over the gdbstub a few times and reads QEMU's own ``TB flush count`` (HMP
``info jit``, through QMP ``human-monitor-command``) before and after.  The
answer is cached per binary (path, size, mtime) in ``<cache>/qemu/probes.json``.
Where the measure cannot be taken (no GDB), the version decides (>= 10.2).

The choice (:func:`choose`, pure): ``--qemu PATH`` if given; else the host's
``qemu-system-x86_64`` if it does not flush; else the build in the cache; else
the host's (with a warning of what it costs, once per process).

The build (:func:`build`, ``pokelab qemu``): Debian's source package
``qemu`` :data:`DEBIAN_VERSION` (the ``+ds`` tarball: no firmware blobs, no
bundled Python wheels), fetched with ``apt-get source --download-only`` through
pokelab's own apt state (:mod:`orchestrator.host.apt`: sid's ``deb-src``; the
host's apt configuration and lists are not used or touched), configured for
what pokelab needs only (``x86_64-softmmu`` with the devices of :data:`DEVICES_MAK`,
slirp, plugins; no docs, tools, GUI, audio or USB), built with ``ninja qemu-system-x86_64``, and installed as
``<cache>/qemu/<version>/qemu-system-x86_64`` with a ``build.json`` beside it
(written last: its presence marks a complete build).  The build tree is deleted
afterwards.  The built binary uses the host's firmware: ``-L /usr/share/seabios
-L /usr/share/qemu`` (packages ``seabios`` and ``qemu-system-data``).  Host
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
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..core.errors import InfraError, UsageError
from ..host import procs
from ..kernels.images import file_lock

log = logging.getLogger(__name__)

BINARY = "qemu-system-x86_64"
#: The first upstream release whose gdbstub does not flush on a debug stop (dae1e0df49d4).
FAST_SINCE = (10, 2)
#: The Debian source package built when the host's QEMU flushes (sid; later versions' pool
#: files were not reachable here, this one builds on Debian 12 and 13).
DEBIAN_VERSION = "1:10.2.2+ds-1"
#: Upstream version of :data:`DEBIAN_VERSION`: the cache directory's name.
BUILD_VERSION = "10.2.2"
#: Python packages for the build venv (QEMU 10.2 needs meson >= 1.5; Debian 12 has 1.0).
BUILD_PYPI = ("meson==1.12.1", "pycotap==1.3.1")
#: The firmware dirs a built binary is run with (``-L``, first wins): the host's BIOS and ROMs.
HOST_DATA_DIRS = (Path("/usr/share/seabios"), Path("/usr/share/qemu"))
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
DEADLINES = {"untar": 300.0, "pip": 300.0,
             "configure": 600.0, "ninja": 3600.0, "version": 20.0}


@dataclass(frozen=True)
class QemuBinary:
    """One QEMU binary and what is known about it.

    ``version`` is QEMU's own (``--version``: "7.2.22"), ``data_dirs`` the ``-L``
    directories it runs with (empty: its built-in paths), ``tb_flushes_per_stop``
    the measured ``TB flush count`` increase per gdbstub debug stop (None: not
    measured), ``origin`` one of ``given`` (``--qemu``), ``host``, ``built``.
    """

    path: Path
    version: str
    origin: str
    data_dirs: tuple[Path, ...] = ()
    tb_flushes_per_stop: float | None = None

    @property
    def flushes(self) -> bool:
        """The gdbstub flushes the translation cache on a debug stop (measured, else by version)."""
        if self.tb_flushes_per_stop is not None:
            return self.tb_flushes_per_stop > 0
        return version_tuple(self.version) < FAST_SINCE

    def record(self) -> dict[str, Any]:
        """What verdicts and the bench write about it."""
        return {"qemu": str(self.path), "qemu_version": self.version,
                "qemu_tb_flushes_per_stop": self.tb_flushes_per_stop}


# --------------------------------------------------------------------------- pure


def parse_version(text: str) -> str:
    """``"7.2.22"`` from ``qemu-system-x86_64 --version`` output; InfraError if absent.

    The first line reads ``QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)``.
    """
    m = re.search(r"QEMU emulator version (\d+\.\d+(?:\.\d+)?)", text)
    if m is None:
        raise InfraError(f"not a QEMU version line: {text.strip().splitlines()[:1]}")
    return m.group(1)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.2.2"`` -> ``(10, 2, 2)``; non-numeric parts end it (``"10.2.0-rc1"`` -> ``(10, 2)``)."""
    out = []
    for part in version.split("."):
        m = re.match(r"\d+", part)
        if m is None:
            break
        out.append(int(m.group(0)))
        if m.group(0) != part:
            break
    return tuple(out)


def parse_tb_flush_count(info_jit: str) -> int:
    """QEMU's ``TB flush count`` from HMP ``info jit`` (``tb_ctx.tb_flush_count``).

    The line reads ``TB flush count      12`` under "Statistics:".  InfraError if
    absent (a KVM guest has no translation cache: ``info jit`` is TCG only).
    """
    m = re.search(r"^TB flush count\s+(\d+)\s*$", info_jit, re.MULTILINE)
    if m is None:
        raise InfraError("no 'TB flush count' in QEMU's 'info jit' output",
                         info_jit.strip()[-500:])
    return int(m.group(1))


def choose(given: QemuBinary | None, host: QemuBinary | None,
           built: QemuBinary | None) -> QemuBinary:
    """The QEMU to run: ``given``; else a ``host`` that does not flush; else ``built``; else ``host``.

    InfraError when there is none at all.
    """
    if given is not None:
        return given
    if host is not None and not host.flushes:
        return host
    if built is not None:
        return built
    if host is not None:
        return host
    raise InfraError(f"{BINARY} not found: install the Debian package 'qemu-system-x86' "
                     "(make setup) or build one with `pokelab qemu`")


def needs_build(host: QemuBinary | None, built: QemuBinary | None) -> bool:
    """``pokelab qemu`` builds only when neither the host's nor a cached build is free of the flush."""
    return (host is None or host.flushes) and built is None


def cost_warning(q: QemuBinary) -> str:
    """The one-line warning for a QEMU whose gdbstub flushes (what it costs, what to do)."""
    n = q.tb_flushes_per_stop
    per = "" if n is None else f" (measured: TB flushes per stop {n:g})"
    return (f"QEMU {q.version} ({q.path}) flushes TCG's whole translation cache at every debug "
            f"stop{per}: each trap the probe takes then costs ~5x more host time (19-20 ms vs "
            f"3-4 ms per trap measured here) and slows the guest; `pokelab qemu` builds QEMU "
            f"{BUILD_VERSION} into the cache once (~5 min on 2 cores)")


# --------------------------------------------------------------------------- measuring


def _version_of(path: Path) -> str:
    res = procs.run([str(path), "--version"], timeout=DEADLINES["version"],
                    what=f"{path} --version")
    return parse_version(res.stdout.decode(errors="replace"))


def _free_port() -> int:
    from .qemu import free_port
    return free_port()


def info_jit(qmp: Any) -> str:
    """HMP ``info jit`` over a :class:`orchestrator.machine.qmp.Qmp` (TCG only)."""
    return str(qmp.cmd("human-monitor-command", **{"command-line": "info jit"}))


def measure_flushes(path: Path, data_dirs: Sequence[Path], workdir: Path, steps: int = 4) -> float:
    """``TB flush count`` increase per gdbstub debug stop of ``path``: 0 for a QEMU without the flush.

    QEMU starts paused (``-S``, no kernel: SeaBIOS runs), GDB (over MI) single-steps
    it ``steps + 1`` times; each step ends in a debug stop.  A flush is queued at the
    stop and done when the vCPU next runs, so the count read after the first stop
    and after the last differs by the flushes of ``steps`` stops.
    """
    from ..gdb.mi import MiSession, gdb_argv
    from .qmp import Qmp

    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "qmp.sock"
    port = _free_port()
    argv = [str(path), *[a for d in data_dirs for a in ("-L", str(d))], "-machine", "pc",
            "-accel", "tcg", "-m", "256", "-nodefaults", "-no-user-config", "-display", "none",
            "-S", "-qmp", f"unix:{sock},server=on,wait=off", "-gdb", f"tcp:127.0.0.1:{port}"]
    with open(workdir / "qemu.stderr", "wb") as err:
        child = procs.Child(argv, name="qemu (flush probe)", stderr=err)
    qmp = mi = None
    try:
        qmp = Qmp(sock, workdir / "qmp.jsonl", 10.0, abort=lambda: child.poll() is not None)
        gdb = gdb_argv(None)
        gdb[0] = procs.which("gdb", "gdb")
        mi = MiSession(gdb, workdir / "mi.log", 20.0)
        mi.command("-gdb-set mi-async on")
        start = mi.async_count
        mi.command(f"-target-select remote 127.0.0.1:{port}")
        mi.wait_async(lambda r: r.get("message") == "stopped", 20.0, start)
        counts = []
        for i in range(steps + 1):
            start = mi.async_count
            mi.command("-exec-step-instruction")
            if mi.wait_async(lambda r: r.get("message") == "stopped", 20.0, start) is None:
                raise InfraError(f"{path}: a gdbstub single-step did not stop")
            if i in (0, steps):
                counts.append(parse_tb_flush_count(info_jit(qmp)))
        return (counts[1] - counts[0]) / steps
    except InfraError as exc:
        if child.poll() is not None:
            tail = (workdir / "qemu.stderr").read_text(errors="replace").strip()
            raise InfraError(f"{path} exited during the flush probe: {tail[-300:]}") from exc
        raise
    finally:
        if mi is not None:
            mi.close()
        if qmp is not None:
            qmp.close()
        child.close(grace=1.0)


def _probe_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def kvm_probe_key(qemu: QemuBinary | None, uname: os.uname_result | None = None) -> str:
    """What the one-time "does KVM boot a guest here" answer depends on: the host kernel and the QEMU.

    ``"<release> <version> | <qemu path>:<size>:<mtime_ns> <qemu version>"``; ``qemu`` None is
    ``qemu-system-x86_64`` on PATH (``?`` where it cannot be read).  A new host kernel, another
    QEMU, or the same path rebuilt or upgraded gives another key, so the probe runs again.
    """
    u = uname or os.uname()
    path = qemu.path if qemu is not None else Path(shutil.which(BINARY) or BINARY)
    try:
        binary = _probe_key(path)
    except OSError:
        binary = f"{path}:?"
    version = qemu.version if qemu is not None else "?"
    return f"{u.release} {u.version} | {binary} {version}"


def describe(path: Path, origin: str, cache: Path, data_dirs: Sequence[Path] = ()) -> QemuBinary:
    """Version and measured flushes of ``path`` (the measure cached per binary in ``probes.json``)."""
    qdir = cache / "qemu"
    store = qdir / "probes.json"
    key = _probe_key(path)
    with file_lock(qdir / ".probes.lock"):
        try:
            known = json.loads(store.read_text())
        except (OSError, ValueError):
            known = {}
        entry = known.get(key)
        if not isinstance(entry, dict) or "version" not in entry:
            version = _version_of(path)
            flushes: float | None
            try:
                with tempfile.TemporaryDirectory(prefix="pokelab-qemu-probe-") as tmp:
                    flushes = measure_flushes(path, data_dirs, Path(tmp))
            except InfraError as exc:
                log.warning("could not measure %s's flushes per debug stop (%s): going by its "
                            "version, %s", path, exc.title, version)
                flushes = None
            entry = {"version": version, "tb_flushes_per_stop": flushes, "measured": time.time()}
            if flushes is not None:
                known[key] = entry
                qdir.mkdir(parents=True, exist_ok=True)
                store.write_text(json.dumps(known, indent=2, sort_keys=True) + "\n")
    return QemuBinary(path=path, version=str(entry["version"]), origin=origin,
                      data_dirs=tuple(data_dirs), tb_flushes_per_stop=entry["tb_flushes_per_stop"])


# --------------------------------------------------------------------------- choosing


def install_dir(cache: Path, version: str = BUILD_VERSION) -> Path:
    return cache / "qemu" / version


def built_path(cache: Path, version: str = BUILD_VERSION) -> Path | None:
    """The cached build's binary, if its build finished (``build.json`` is written last)."""
    d = install_dir(cache, version)
    return d / BINARY if (d / "build.json").is_file() and (d / BINARY).is_file() else None


def check_given(path: Path) -> Path:
    """``--qemu PATH``: an executable file, else UsageError (one line)."""
    if not path.is_file():
        raise UsageError(f"--qemu {path}: no such file")
    if not os.access(path, os.X_OK):
        raise UsageError(f"--qemu {path}: not executable")
    return path.resolve()


def _data_dirs_for(path: Path) -> tuple[Path, ...]:
    """A binary under the cache runs with the host's firmware dirs; a host binary knows its own."""
    return HOST_DATA_DIRS if (path.parent / "build.json").is_file() else ()


def candidates(cache: Path) -> tuple[QemuBinary | None, QemuBinary | None]:
    """(the host's ``qemu-system-x86_64``, the cached build), each described, or None."""
    found = shutil.which(BINARY)
    host = describe(Path(found), "host", cache) if found else None
    bpath = built_path(cache)
    built = describe(bpath, "built", cache, HOST_DATA_DIRS) if bpath else None
    return host, built


def select(given: Path | None, cache: Path) -> QemuBinary:
    """The QEMU a VM command runs (see :func:`choose`)."""
    if given is not None:
        path = check_given(given)
        q = describe(path, "given", cache, _data_dirs_for(path))
    else:
        host, built = candidates(cache)
        q = choose(None, host, built)
    return q


@cache
def warn_once(q: QemuBinary) -> None:
    """Log :func:`cost_warning` for ``q``, once per process (a VM about to run on it)."""
    log.warning("%s", cost_warning(q))


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
