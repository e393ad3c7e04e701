"""Build a guest kernel from a source tree (plus patches and config fragments) and register it.

Layout under the cache::

    src/linux-source-6.1/                 Debian's linux-source-6.1 tarball, unpacked once
    kbuild/<key>/tree/                    scratch copy of the source (patches go here)
    kbuild/<key>/out/                     make O=... output (kept: the next build is incremental)
    kbuild/<key>/state.json               what the scratch copy holds (source file stats, patched files)
    kbuild/<key>/build.log                the last make's output
    ccache/                               CCACHE_DIR
    kernels/custom-<build-id12>/          bzImage, vmlinux, System.map, .config, vmlinux-gdb.py, meta.json,
                                          build/ (what an out-of-tree module builds against: extmod.py)
    kernels/custom.json                   registry: id -> directory (see images.custom_kernel)

The user's tree is never written: it is synced into the scratch copy, where the
patches are applied.  Files are only rewritten when they changed in the source
or were patched by the previous build, so make only rebuilds what changed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InfraError, UsageError
from ..host import procs
from ..host.cache import path_key
from . import extmod, images

log = logging.getLogger(__name__)

DEFAULT_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
#: deadlines (s).  Measured on 2 cores: a full build 665 s, an incremental one 19 s
#: (bench/latest.json); a config target or an unpack takes seconds.  Slow or busy hosts get ~10x.
BUILD_TIMEOUT_S = 2 * 3600.0
CONFIG_TIMEOUT_S = 300.0
UNPACK_TIMEOUT_S = 600.0
TARGETS = ("bzImage", "modules", "scripts_gdb")
_OPT = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_OFF = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


class BuildError(UsageError):
    """A patch that does not apply, a config that lost an option, a failed make (exit 2)."""

    blame = "usage"


def default_fragments() -> list[Path]:
    from ..host.cache import images_dir

    return sorted((images_dir() / "config").glob("*.config"))


def default_source(cache: Path) -> Path:
    """Debian's linux-source-6.1, unpacked into the cache once: from the host's
    ``/usr/src/linux-source-6.1.tar.xz`` when a Debian 12 host has it installed, else downloaded
    through pokelab's own apt sources (:mod:`orchestrator.host.apt`: bookworm has it, whatever
    the host runs)."""
    dest = cache / "src"
    tree = dest / "linux-source-6.1"
    stamp = dest / ".linux-source-6.1.complete"
    if stamp.is_file() and tree.is_dir():
        return tree
    if not DEFAULT_TARBALL.is_file():
        from ..host.apt import Apt

        return source_from_deb(Apt(cache).deb("linux-source-6.1"), cache)
    _untar(DEFAULT_TARBALL, dest, tree)
    stamp.write_text("")
    return tree


def _untar(tarball: Path, dest: Path, tree: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if tree.exists():
        shutil.rmtree(tree)
    procs.run(["tar", "-C", str(dest), "-xf", str(tarball)], timeout=UNPACK_TIMEOUT_S,
              what="unpack linux-source")


def source_from_deb(deb: Path, cache: Path) -> Path:
    """The tree of a Debian ``linux-source-X.Y`` package file, unpacked into the cache once per version.

    ``deb``: ``linux-source-7.3_7.3.4-1~bpo13+1_all.deb`` (from pokelab's own apt sources, any
    suite); it holds ``/usr/src/linux-source-X.Y.tar.xz``.  Returns ``<cache>/src/linux-source-X.Y``
    (a new version replaces the old tree; ``.linux-source-X.Y.complete`` holds the version).
    UsageError when the file is not such a package.
    """
    package, _, rest = deb.name.partition("_")
    version = rest.rpartition("_")[0]
    if not package.startswith("linux-source-") or not version or not deb.is_file():
        raise UsageError(f"{deb} is not a Debian linux-source-X.Y package file")
    dest = cache / "src"
    tree = dest / package
    stamp = dest / f".{package}.complete"
    if stamp.is_file() and stamp.read_text().strip() == version and tree.is_dir():
        return tree
    scratch = dest / f".{package}.deb-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        procs.run(["dpkg-deb", "-x", str(deb), str(scratch)], timeout=UNPACK_TIMEOUT_S,
                  what=f"unpack {deb.name}")
        tarball = scratch / "usr" / "src" / f"{package}.tar.xz"
        if not tarball.is_file():
            raise UsageError(f"{deb} holds no /usr/src/{package}.tar.xz")
        stamp.unlink(missing_ok=True)
        _untar(tarball, dest, tree)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stamp.write_text(version + "\n")
    return tree


def expand_patches(items: Sequence[Path]) -> list[Path]:
    """Files as given; a directory gives its *.patch / *.diff in name order."""
    out: list[Path] = []
    for item in items:
        if item.is_dir():
            out.extend(sorted(p for p in item.iterdir() if p.suffix in (".patch", ".diff")))
        elif item.is_file():
            out.append(item)
        else:
            raise UsageError(f"patch {item} does not exist")
    return [p.resolve() for p in out]


def patched_paths(patch: Path) -> list[str]:
    """Paths (relative, -p1) a patch touches."""
    paths = []
    for line in patch.read_text(errors="replace").splitlines():
        if line.startswith(("+++ ", "--- ")):
            name = line[4:].split("\t")[0].strip()
            if name != "/dev/null" and "/" in name:
                paths.append(name.split("/", 1)[1])
    return sorted(set(paths))


def wanted_options(fragments: Sequence[Path]) -> dict[str, str]:
    """{CONFIG_X: value} asked for by the fragments ('n' for `# ... is not set`)."""
    want: dict[str, str] = {}
    for frag in fragments:
        for line in frag.read_text().splitlines():
            line = line.strip()
            if m := _OPT.match(line):
                want[m.group(1)] = m.group(2)
            elif m := _OFF.match(line):
                want[m.group(1)] = "n"
    return want


def config_values(config_text: str) -> dict[str, str]:
    have: dict[str, str] = {}
    for line in config_text.splitlines():
        if m := _OPT.match(line):
            have[m.group(1)] = m.group(2)
    return have


def missing_options(want: dict[str, str], have: dict[str, str]) -> list[str]:
    """Options whose final value is not what the fragments asked for, as `CONFIG_X=want (got)`."""
    bad = []
    for opt, value in want.items():
        got = have.get(opt, "n")
        if got != value:
            bad.append(f"{opt}={value} (got {got})")
    return bad


# --------------------------------------------------------------------------- scratch tree


def _scan(root: Path) -> dict[str, list[int]]:
    files: dict[str, list[int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and ".git" in dirnames:
            dirnames.remove(".git")
        for name in filenames:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            files[os.path.relpath(full, root)] = [st.st_size, st.st_mtime_ns]
    return files


def sync_tree(source: Path, tree: Path, state_file: Path) -> int:
    """Make ``tree`` a copy of ``source`` (minus .git) plus nothing else; return files rewritten."""
    now = _scan(source)
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    if state is None or state.get("source") != str(source) or not tree.is_dir():
        if tree.exists():
            shutil.rmtree(tree)
        tree.mkdir(parents=True)
        procs.run(["sh", "-c", 'tar -C "$1" --exclude=./.git -cf - . | tar -C "$2" -xf -', "sh",
                   str(source), str(tree)], timeout=UNPACK_TIMEOUT_S, what="copy the source tree")
        changed = len(now)
    else:
        old: dict[str, list[int]] = state["files"]
        dirty = set(state.get("patched", []))
        changed = 0
        for rel, stat in now.items():
            if old.get(rel) != stat or rel in dirty or not (tree / rel).exists():
                dst = tree / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.is_symlink() or dst.exists():
                    dst.unlink()
                src = source / rel
                if src.is_symlink():
                    os.symlink(os.readlink(src), dst)
                else:
                    shutil.copyfile(src, dst)  # a fresh mtime: make sees the change
                    shutil.copymode(src, dst)
                changed += 1
        for rel in set(old) - set(now):
            (tree / rel).unlink(missing_ok=True)
            changed += 1
        for rel in dirty - set(now):  # files a patch created
            (tree / rel).unlink(missing_ok=True)
    state_file.write_text(json.dumps({"source": str(source), "files": now, "patched": []}))
    return changed


def apply_patches(tree: Path, patches: Sequence[Path], state_file: Path) -> None:
    state = json.loads(state_file.read_text())
    for patch in patches:
        # recorded before applying: a half-applied patch is undone by the next sync
        state["patched"] = sorted(set(state["patched"]) | set(patched_paths(patch)))
        state_file.write_text(json.dumps(state))
        try:
            # patch reports failed hunks on stdout: send it to stderr, whose tail the error carries
            procs.run(["sh", "-c", 'exec patch -p1 --forward --batch --dry-run -i "$1" 1>&2', "sh",
                       str(patch)], cwd=tree, timeout=120, what=f"patch {patch.name}")
        except InfraError as exc:
            raise BuildError(f"patch {patch} does not apply to {state['source']}", exc.tail) from None
        procs.run(["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-s", "-i", str(patch)],
                  cwd=tree, timeout=120, what=f"patch {patch.name}")


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildResult:
    kernel_id: str
    kernel_dir: Path
    build_id: str
    release: str
    seconds: float
    out: Path


def _make(tree: Path, out: Path, args: Sequence[str], logfile: Path, what: str, jobs: int,
          cache: Path, ccache_dir: Path | None = None, timeout: float = CONFIG_TIMEOUT_S) -> None:
    env = {
        "CCACHE_DIR": str(ccache_dir or cache / "ccache"),
        "CCACHE_BASEDIR": str(cache),
        "KBUILD_BUILD_TIMESTAMP": "pokelab",
        "KBUILD_BUILD_USER": "pokelab",
        "KBUILD_BUILD_HOST": "pokelab",
        "KBUILD_BUILD_VERSION": "1",  # not a counter: the same tree and config give the same build-id
    }
    exports = " ".join(f"{k}={v!r}" for k, v in env.items())
    cmd = (f"{exports} exec nice -n 10 make -C {str(tree)!r} O={str(out)!r} ARCH=x86_64 "
           f"-j{jobs} {' '.join(repr(a) for a in args)} >>{str(logfile)!r} 2>&1")
    try:
        procs.run(["sh", "-c", cmd], timeout=timeout, what=what)
    except InfraError as exc:
        lines = logfile.read_text(errors="replace").splitlines() if logfile.is_file() else []
        errors = [ln for ln in lines if "error" in ln.lower() or "Error " in ln]
        tail = "\n".join(lines[-15:])
        first = (errors[0].strip() if errors else exc.title)[:200]
        raise BuildError(f"{what} failed: {first} (log: {logfile})", tail) from None


#: what a kernel build runs: (program, Debian package); the Makefile's E2E_PACKAGES
#: (`make kbuild-deps`) installs them all, with libelf-dev and dwarves
BUILD_TOOLS = (("ccache", "ccache"), ("patch", "patch"), ("flex", "flex"), ("bison", "bison"),
               ("bc", "bc"), ("make", "make"), ("gcc", "gcc"))


def check_build_tools(which: Callable[[str], str | None] = shutil.which) -> None:
    """InfraError naming every missing build tool and the one command that installs them."""
    missing = [(tool, pkg) for tool, pkg in BUILD_TOOLS if which(tool) is None]
    if missing:
        pkgs = " ".join(dict.fromkeys(pkg for _t, pkg in missing))
        raise InfraError(f"kernel builds need {', '.join(t for t, _p in missing)}: "
                         f"apt-get install {pkgs} (or `make kbuild-deps`: every kernel-build package)")


def _check_tree(src: Path) -> None:
    if not (src / "Makefile").is_file() or not (src / "arch" / "x86").is_dir():
        raise UsageError(f"{src} is not a kernel source tree")


def work_dir(source: Path, cache: Path) -> Path:
    """``kbuild/<key>/``: the scratch copy, O= dir and log of one (resolved) source path."""
    return cache / "kbuild" / path_key(source)


def build_kernel(source: Path | None, patches: Sequence[Path] = (), fragments: Sequence[Path] = (),
                 out: Path | None = None, jobs: int = 2, cache: Path | None = None,
                 say: Callable[[str], None] = log.info, ccache_dir: Path | None = None) -> BuildResult:
    """Build ``source`` (default: Debian's linux-source-6.1) and register it.

    ``ccache_dir`` points CCACHE_DIR elsewhere than the shared ``<cache>/ccache`` (the benchmark's
    cold build uses an empty one).
    """
    from ..host.cache import cache_dir

    # the user's input first (cheap, their mistake; nothing made yet), then the host's tools, then slow work
    if source is not None:
        _check_tree(source.resolve())
    patch_files = expand_patches(patches)
    frags = [f.resolve() for f in (fragments or default_fragments())]
    for f in frags:
        if not f.is_file():
            raise UsageError(f"config fragment {f} does not exist")
    check_build_tools()
    cache = cache or cache_dir()
    src = (source or default_source(cache)).resolve()
    _check_tree(src)
    work = work_dir(src, cache)
    work.mkdir(parents=True, exist_ok=True)
    tree, state_file, logfile = work / "tree", work / "state.json", work / "build.log"
    outdir = (out or work / "out").resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    logfile.write_text("")
    started = time.monotonic()
    with images.file_lock(work / ".lock"):
        n = sync_tree(src, tree, state_file)
        say(f"source {src}: {n} files synced into {tree}")
        apply_patches(tree, patch_files, state_file)
        for p in patch_files:
            say(f"applied {p.name}")
        # the config is made in a side directory and copied over only when it differs,
        # so an unchanged config does not make kbuild rebuild everything
        cfgdir = work / "cfg"
        cfgdir.mkdir(exist_ok=True)
        _make(tree, cfgdir, ["allnoconfig"], logfile, "make allnoconfig", jobs, cache, ccache_dir)
        try:
            procs.run(["sh", str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(cfgdir),
                       str(cfgdir / ".config"), *map(str, frags)], cwd=tree, timeout=CONFIG_TIMEOUT_S,
                      what="merge_config.sh")
        except InfraError as exc:
            raise BuildError(f"merging the config fragments failed: {exc.title}", exc.tail) from None
        _make(tree, cfgdir, ["olddefconfig"], logfile, "make olddefconfig", jobs, cache, ccache_dir)
        config = (cfgdir / ".config").read_text()
        bad = missing_options(wanted_options(frags), config_values(config))
        if bad:
            raise BuildError(f"config options did not end up as asked: {', '.join(bad)}")
        target = outdir / ".config"
        if not target.is_file() or target.read_text() != config:
            target.write_text(config)
        say(f"building {' '.join(TARGETS)} in {outdir} (log {logfile})")
        make_started = time.monotonic()
        _make(tree, outdir, ["CC=ccache gcc", *TARGETS], logfile, "kernel build", jobs, cache, ccache_dir,
              timeout=BUILD_TIMEOUT_S)
        make_s = time.monotonic() - make_started
        # what our module (any out-of-tree module) needs to build against this kernel, taken now:
        # the next build reuses the scratch tree and O= dir
        mod_build = extmod.install(tree, outdir, work / "extmod")
        seconds = time.monotonic() - started
        say(f"make took {make_s:.0f} s, {seconds:.0f} s in all")
        return register(outdir, cache, {"source": str(src), "patches": [str(p) for p in patch_files],
                                        "fragments": [str(f) for f in frags], "make_s": round(make_s, 1)},
                        seconds, mod_build)


def register(outdir: Path, cache: Path, info: dict[str, object], seconds: float,
             mod_build: Path | None = None) -> BuildResult:
    """Copy the build's bzImage + vmlinux to kernels/custom-<build-id>/ and list it in custom.json.

    ``mod_build`` (from extmod.install) is moved to ``custom-<build-id>/build``.
    """
    bz, vm = outdir / "arch/x86/boot/bzImage", outdir / "vmlinux"
    arts = images.artifacts_from_paths(bz, vm)
    kid = f"custom-{arts.build_id[:12]}"
    kernels = cache / "kernels"
    kdir = kernels / kid
    kdir.mkdir(parents=True, exist_ok=True)
    for src, name in ((bz, "bzImage"), (vm, "vmlinux"), (outdir / "System.map", "System.map"),
                      (outdir / ".config", ".config"), (outdir / "vmlinux-gdb.py", "vmlinux-gdb.py")):
        if src.is_file():
            shutil.copy2(src, kdir / name)
    if mod_build is not None:
        shutil.rmtree(kdir / "build", ignore_errors=True)
        mod_build.rename(kdir / "build")
    meta = {"id": kid, "release": arts.release, "build_id": arts.build_id, "build_dir": str(outdir),
            "build_s": round(seconds, 1), **info}
    (kdir / "meta.json").write_text(json.dumps(meta, indent=1))
    with _registry(cache) as reg:
        reg[kid] = {"dir": str(kdir), "release": arts.release, "build_id": arts.build_id}
    return BuildResult(kid, kdir, arts.build_id, arts.release, seconds, outdir)


@contextmanager
def _registry(cache: Path) -> Iterator[dict[str, Any]]:
    """``kernels/custom.json`` to change in the block, under its lock; written back atomically."""
    kernels = cache / "kernels"
    with images.file_lock(kernels / ".custom.lock"):
        reg = images.custom_registry(cache)
        yield reg
        reg_file = kernels / images.CUSTOM_REGISTRY
        tmp = reg_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(reg, indent=1))
        tmp.replace(reg_file)


def registered(cache: Path) -> set[str]:
    """The ids in ``kernels/custom.json``."""
    return set(images.custom_registry(cache))


def unregister(kernel_ids: Sequence[str], cache: Path) -> None:
    """Drop built kernels from ``custom.json`` and delete their directories."""
    for kid in kernel_ids:
        if not re.fullmatch(r"custom-[0-9a-f]+", kid):
            raise ValueError(f"not a built kernel id: {kid!r}")
    with _registry(cache) as reg:
        for kid in kernel_ids:
            reg.pop(kid, None)
            shutil.rmtree(cache / "kernels" / kid, ignore_errors=True)  # where register() puts it
