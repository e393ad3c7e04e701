"""Which QEMU pokelab runs: describe a binary (version, flushes per debug stop), measure it, choose one.

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
``qemu-system-x86_64`` if it does not flush; else the build in the cache
(``qemu_build.py``, ``pokelab qemu``); else the host's (with a warning of what it
costs, once per process).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
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
#: The QEMU version ``pokelab qemu`` builds (qemu_build.DEBIAN_VERSION's upstream): the cache
#: directory's name.
BUILD_VERSION = "10.2.2"
#: The firmware dirs a built binary is run with (``-L``, first wins): the host's BIOS and ROMs,
#: in Debian's QEMU's own order.  So ``-M microvm`` gets qboot (``/usr/share/qemu/bios-microvm.bin``
#: is a link to ``qboot.rom``) as with the host's QEMU, not the SeaBIOS build of the same name in
#: ``/usr/share/seabios`` (qboot boots ~0.1 s sooner under TCG, measured); ``-M pc`` gets
#: ``/usr/share/seabios/bios-256k.bin`` either way.
HOST_DATA_DIRS = (Path("/usr/share/qemu"), Path("/usr/share/seabios"))
#: s for ``qemu-system-x86_64 --version``
VERSION_DEADLINE = 20.0


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
    res = procs.run([str(path), "--version"], timeout=VERSION_DEADLINE,
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


def known(path: Path, origin: str, cache: Path) -> QemuBinary | None:
    """``path`` as :func:`describe` measured it before (``probes.json``), or None: nothing is run or
    written (``--dry-run``)."""
    try:
        entry = json.loads((cache / "qemu" / "probes.json").read_text()).get(_probe_key(path))
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict) or "version" not in entry:
        return None
    return QemuBinary(path=path, version=str(entry["version"]), origin=origin,
                      data_dirs=_data_dirs_for(path), tb_flushes_per_stop=entry.get("tb_flushes_per_stop"))


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


def executable(text: str) -> Path:
    """``--qemu``'s ``type=``: the path as given; ValueError for an empty one (argparse: "invalid
    executable value: ''"), which ``Path`` would take as ``.``, the current directory."""
    if not text.strip():
        raise ValueError("not a path")
    return Path(text)


def check_given(path: Path, what: str = "--qemu") -> Path:
    """``--qemu PATH`` (``what``: the option): an executable file, resolved; else UsageError (one
    line: missing, a directory, not a regular file, not executable)."""
    if path.is_dir():
        raise UsageError(f"{what} {path}: is a directory, not an executable file")
    if not path.exists():
        raise UsageError(f"{what} {path}: no such file")
    if not path.is_file():
        raise UsageError(f"{what} {path}: not a regular file")
    if not os.access(path, os.X_OK):
        raise UsageError(f"{what} {path}: not executable")
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

