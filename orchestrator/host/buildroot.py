"""A Debian build root for out-of-tree modules: the kernel's own compiler and libc, whatever the host runs.

Debian's ``linux-headers-<release>`` expect the suite they were built in:
their Makefile calls that suite's compiler (``.kernelvariables``:
``CC = x86_64-linux-gnu-gcc-14`` for 7.x+deb13), and the kbuild tools they
run (fixdep, modpost, objtool in ``linux-kbuild-<abi>``) are linked against
that suite's libc (``libc6 (>= 2.38)`` for 7.x: trixie's).  A Debian 12 host
has neither; a Debian 13 host has gcc-14 but not bookworm's gcc-12 for 6.1.
So every Debian kernel's module is built the same way on every host:

1. The headers' closure is downloaded (never installed on the host):
   ``linux-headers-<release>`` and what it depends on among the kernel's own
   packages (``linux-headers-*-common``, ``linux-kbuild-*``, the
   ``linux-compiler-gcc-N-x86`` metapackage).  Their other dependencies
   (the compiler, the kbuild tools' libraries, pahole) and ``make`` are what
   the root must hold: :func:`plan` turns the packages' control fields into a
   :class:`Plan`.
2. The root: ``debootstrap --variant=minbase --include=<those> <suite>`` of
   the suite that ships that compiler (:data:`COMPILER_SUITE`), cached by
   the suite, mirror and package set (:attr:`Plan.root_key`)::

       <cache>/buildroots/<suite>-<root_key>/root/      (+ meta.json, .complete; lock in .locks/)

3. The headers: ``dpkg -x`` of each package of the closure into its own
   directory, cached by package and exact version (:func:`unpacked_dir`), so
   the flavours of one ABI share its ``-common`` tree and its kbuild, and two
   ABIs whose ``linux-kbuild-6.1`` differ never share one::

       <cache>/buildroots/debs/<package>_<version>/usr/{src,lib}/...

4. The build: ``bwrap`` with the root read-only as ``/``, the packages'
   ``/usr/src/linux-headers-*`` and ``/usr/lib/linux-kbuild-*`` bound read-only over it,
   the module directory as ``/build``, no network, killed with its parent
   (:func:`bwrap_argv`).

debootstrap needs root; bwrap does not.  Every process goes through
:mod:`orchestrator.host.procs` with a deadline.

Measured on a Debian 12 host (2 busy cores): a root takes 67-155 s cold and
345-395 MB (bookworm 345, trixie 360, sid 395); a 7.x ABI's headers are 94 MB
unpacked (-common 83, each flavour 8-11, kbuild 3); ``make`` of our module 4-8 s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InfraError
from . import procs
from .cache import file_lock, tree_size

log = logging.getLogger(__name__)

MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_TIMEOUT_S = 1200.0
UNPACK_TIMEOUT_S = 300.0
CONTROL_TIMEOUT_S = 30.0
BUILD_TIMEOUT_S = 300.0
#: in every root: the build's driver; the unprefixed ``as`` that gcc runs (gcc-14-for-host
#: brings only x86_64-linux-gnu-as: "cannot execute 'as'", then Kbuild's -mfentry test fails);
#: and what the kbuild tools of some ABIs of a suite need and others not (6.12's linux-kbuild
#: depends on pahole and zlib1g, 6.1's does not), so that one root serves every ABI of a suite
BASE_PACKAGES = ("binutils", "make", "pahole", "zlib1g")
#: the suite that ships gcc-N as its compiler (Debian 12 bookworm: gcc 12; 13 trixie: gcc 14);
#: a newer gcc than any release's is only in the development suite (sid)
COMPILER_SUITE = {12: "bookworm", 14: "trixie"}
DEVELOPMENT_SUITE = "sid"
STAMP = ".complete"
META = "meta.json"

# the compiler the headers ask for:
# linux-compiler-gcc-12-x86 (6.1), gcc-12 (6.12+deb12), gcc-14-for-host (7.x+deb13)
_COMPILER = re.compile(r"^(?:linux-compiler-)?gcc-(\d+)(?:-x86|-for-host)?$")


@dataclass(frozen=True)
class Control:
    """The control fields of one downloaded .deb that :func:`plan` reads (``dpkg-deb -f``)."""

    package: str
    version: str
    depends: str = ""


@dataclass(frozen=True)
class Plan:
    """What a module build for one kernel release needs.  Pure data.

    ``suite``: the Debian suite of the root; ``compiler``: gcc's major version;
    ``include``: the packages debootstrap puts into the root (sorted);
    ``unpack``: the .deb packages (name, version) unpacked as the headers (sorted).
    """

    release: str
    suite: str
    compiler: int
    include: tuple[str, ...]
    unpack: tuple[tuple[str, str], ...]
    mirror: str = MIRROR

    @property
    def root_key(self) -> str:
        """12 hex digits over the suite, mirror and packages of the root."""
        text = "\0".join((self.suite, self.mirror, *self.include))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def root_dir(self, cache: Path) -> Path:
        return cache / "buildroots" / f"{self.suite}-{self.root_key}"

    def unpacked_dirs(self, cache: Path) -> list[Path]:
        return [unpacked_dir(cache, name, version) for name, version in self.unpack]


def unpacked_dir(cache: Path, package: str, version: str) -> Path:
    """Where ``dpkg -x`` puts one package of the headers (an epoch's ':' spelled as in .deb names).  Pure."""
    return cache / "buildroots" / "debs" / f"{package}_{version.replace(':', '%3a')}"


def headers_package(release: str) -> str:
    return f"linux-headers-{release}"


def depends_names(field: str) -> list[str]:
    """Package names of a Depends field, the first alternative of each, versions and arch qualifiers dropped.

    ``"a (>= 1), b | c, d:any"`` -> ``["a", "b", "d"]``.  Pure.
    """
    names = []
    for group in field.split(","):
        first = group.split("|")[0].strip()
        name = re.split(r"[\s(\[<]", first, maxsplit=1)[0].split(":")[0]
        if name:
            names.append(name)
    return names


def kernel_side(name: str) -> str:
    """How a dependency of the headers is met: ``"fetch"`` (a package of the kernel's own source,
    downloaded and read), ``"skip"`` (not needed to build a module: the images, their base files,
    the generic linux-base scripts) or ``"root"`` (installed in the build root).  Pure.
    """
    if name.startswith(("linux-headers-", "linux-kbuild-", "linux-compiler-")):
        return "fetch"
    if name == "linux-base" or name.startswith(("linux-image-", "linux-base-", "linux-binary-",
                                                "linux-modules-")):
        return "skip"
    return "root"


def compiler_suite(major: int) -> str:
    """The suite whose gcc-``major`` is the one its kernels are built with.  Pure."""
    return COMPILER_SUITE.get(major, DEVELOPMENT_SUITE)


def plan(release: str, controls: Mapping[str, Control], mirror: str = MIRROR) -> Plan:
    """The build root and headers for ``release`` from the fetched kernel-side packages.  Pure.

    ``controls`` maps each fetched package (``linux-headers-<release>`` and its
    kernel-side closure, see :func:`kernel_side`) to its control fields.
    InfraError if the headers package is missing or names no compiler.
    """
    top = headers_package(release)
    if top not in controls:
        raise InfraError(f"{top} was not fetched")
    include: set[str] = set(BASE_PACKAGES)
    unpack: dict[str, str] = {}
    majors: set[int] = set()
    seen: set[str] = set()
    todo = [top]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        ctl = controls.get(name)
        if ctl is None:
            raise InfraError(f"{name} (needed by the headers of {release}) was not fetched")
        if not name.startswith("linux-compiler-"):
            unpack[name] = ctl.version
        for dep in depends_names(ctl.depends):
            m = _COMPILER.match(dep)
            if m:
                majors.add(int(m.group(1)))
            side = kernel_side(dep)
            if side == "fetch":
                todo.append(dep)
            elif side == "root":
                include.add(dep)
    if not majors:
        raise InfraError(f"{top} names no compiler (gcc-N) among its dependencies")
    major = max(majors)
    return Plan(release=release, suite=compiler_suite(major), compiler=major,
                include=tuple(sorted(include)), unpack=tuple(sorted(unpack.items())), mirror=mirror)


def debootstrap_argv(p: Plan, target: Path, debootstrap: str = "debootstrap") -> list[str]:
    """The debootstrap command that makes ``p``'s root in ``target``.  Pure."""
    return [debootstrap, "--variant=minbase", f"--include={','.join(p.include)}",
            p.suite, str(target), p.mirror]


def mounts(dirs: Sequence[Path]) -> list[tuple[Path, str]]:
    """What to bind into the root from the unpacked packages: (source, path in the root), by path.

    Each package's ``usr/src/linux-headers-*`` and ``usr/lib/linux-kbuild-*`` (the -common and
    flavour trees link to ``../../lib/linux-kbuild-<abi>/scripts``).
    """
    out = []
    for d in dirs:
        for parent, prefix in (("usr/src", "linux-headers-"), ("usr/lib", "linux-kbuild-")):
            base = d / parent
            if base.is_dir():
                out += [(e, f"/{parent}/{e.name}") for e in base.iterdir()
                        if e.name.startswith(prefix) and e.is_dir() and not e.is_symlink()]
    return sorted(out, key=lambda m: m[1])


def bwrap_argv(root: Path, binds: Sequence[tuple[Path, str]], build: Path, release: str,
               bwrap: str = "bwrap") -> list[str]:
    """The sandboxed ``make -C /usr/src/linux-headers-<release> M=/build modules``.  Pure.

    The root and the ``binds`` are read-only; only ``build`` (as ``/build``) and a tmpfs
    ``/tmp`` are writable; no network, a clean environment, killed with its parent.
    """
    argv = [bwrap, "--ro-bind", str(root), "/"]
    for src, dest in binds:
        argv += ["--ro-bind", str(src), dest]
    argv += ["--bind", str(build), "/build", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
             "--unshare-all", "--die-with-parent", "--clearenv",
             "--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin", "--setenv", "HOME", "/build",
             "--setenv", "LC_ALL", "C.UTF-8", "--chdir", "/build",
             "make", "-C", f"/usr/src/{headers_package(release)}", "M=/build", "modules"]
    return argv


# --------------------------------------------------------------------------- I/O


def read_control(deb: Path) -> Control:
    """Package, Version and Depends of ``deb`` (``dpkg-deb -f``)."""
    dpkg_deb = procs.which("dpkg-deb", "dpkg")
    out = procs.run([dpkg_deb, "-f", str(deb), "Package", "Version", "Depends"],
                    timeout=CONTROL_TIMEOUT_S, what=f"reading {deb.name}").stdout.decode()
    fields: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return Control(fields.get("Package", ""), fields.get("Version", ""), fields.get("Depends", ""))


def fetch_headers(release: str, download: Callable[[Sequence[str]], list[Path]]
                  ) -> tuple[dict[str, Control], dict[str, Path]]:
    """Download ``linux-headers-<release>`` and its kernel-side closure with ``download``.

    ``download`` takes package names and returns their .deb paths (an apt wrapper's ``debs``).
    Returns each package's control fields and .deb path.
    """
    controls: dict[str, Control] = {}
    debs: dict[str, Path] = {}
    pending = [headers_package(release)]
    while pending:
        for name, deb in zip(pending, download(pending), strict=True):
            controls[name], debs[name] = read_control(deb), deb
        pending = sorted({d for c in controls.values() for d in depends_names(c.depends)
                          if kernel_side(d) == "fetch" and d not in controls})
    return controls, debs


def _lock(path: Path) -> Path:
    """The lock file of a cached directory: ``.locks/<name>.lock`` beside it."""
    return path.parent / ".locks" / f"{path.name}.lock"


def ensure_root(p: Plan, cache: Path) -> Path:
    """The root of ``p`` (``<cache>/buildroots/<suite>-<key>/root``), made with debootstrap once."""
    top = p.root_dir(cache)
    if (top / STAMP).is_file():
        return top / "root"
    with file_lock(_lock(top)):
        if (top / STAMP).is_file():
            return top / "root"
        if os.geteuid() != 0:
            raise InfraError(f"making the {p.suite} build root for {p.release} needs root (debootstrap); "
                             f"run pokelab once as root to make {top}")
        debootstrap = procs.which("debootstrap", "debootstrap")
        tmp = top.with_name(top.name + ".tmp")
        if tmp.exists():
            log.info("removing incomplete %s", tmp)
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        t = time.monotonic()
        log.info("making the %s build root for %s (gcc-%d): %s", p.suite, p.release, p.compiler,
                 " ".join(p.include))
        try:
            procs.run(debootstrap_argv(p, tmp / "root", debootstrap), timeout=DEBOOTSTRAP_TIMEOUT_S,
                      what=f"debootstrap {p.suite}")
        except InfraError as exc:
            raise InfraError(f"making the {p.suite} build root failed ({exc.title})", exc.tail) from None
        shutil.rmtree(tmp / "root" / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        (tmp / "root" / "build").mkdir(exist_ok=True)
        seconds = time.monotonic() - t
        size = tree_size(tmp / "root")
        meta = {"suite": p.suite, "mirror": p.mirror, "include": list(p.include),
                "seconds": round(seconds, 1), "bytes": size}
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / STAMP).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
        if top.exists():
            shutil.rmtree(top)
        tmp.rename(top)
        log.info("made the %s build root in %.0f s (%d MB)", p.suite, seconds, size >> 20)
    return top / "root"


def ensure_unpacked(p: Plan, debs: Mapping[str, Path], cache: Path) -> list[Path]:
    """``dpkg -x`` of each package in ``p.unpack`` into its own directory, once per version."""
    dpkg_deb = procs.which("dpkg-deb", "dpkg")
    out = []
    for name, version in p.unpack:
        d = unpacked_dir(cache, name, version)
        out.append(d)
        if (d / STAMP).is_file():
            continue
        with file_lock(_lock(d)):
            if (d / STAMP).is_file():
                continue
            tmp = d.with_name(d.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            procs.run([dpkg_deb, "-x", str(debs[name]), str(tmp)], timeout=UNPACK_TIMEOUT_S,
                      what=f"unpacking {debs[name].name}")
            (tmp / STAMP).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
            shutil.rmtree(d, ignore_errors=True)
            tmp.rename(d)
    return out


def build(p: Plan, root: Path, unpacked: Sequence[Path], module_dir: Path,
          timeout: float = BUILD_TIMEOUT_S) -> bytes:
    """``make modules`` of the sources in ``module_dir`` in the root, against the headers (in place).

    Returns make's stderr (the caller judges its warnings); InfraError with its tail on failure.
    """
    bwrap = procs.which("bwrap", "bubblewrap")
    binds = mounts(unpacked)
    if f"/usr/src/{headers_package(p.release)}" not in [dest for _, dest in binds]:
        raise InfraError(f"the unpacked headers have no /usr/src/{headers_package(p.release)}")
    for _, dest in binds:  # bwrap cannot make mount points inside a read-only root
        (root / dest.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return procs.run(bwrap_argv(root, binds, module_dir, p.release, bwrap), timeout=timeout,
                     what=f"make modules in the {p.suite} build root").stderr
