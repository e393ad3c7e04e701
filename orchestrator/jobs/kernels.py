"""``pokelab kernels``, ``images`` and ``build-kernel`` as jobs: the lines they print.

Each function yields its lines as the work is done (a removal, a fetch), so the CLI
prints them as they come; errors (:class:`~orchestrator.core.errors.UsageError` for a
name never fetched or built here) are raised before the first line of a removal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UsageError
from ..core.fields import option
from ..host.apt import MAX_AGE_S
from ..host.cache import cache_dir
from ..kernels import removal
from ..kernels.catalog import Catalog, KernelRequest
from ..kernels.debian import available, resolution, resolve_spec
from ..kernels.images import custom_registry, ensure_kernel, is_cached
from ..kernels.kbuild import BuildError, build_kernel
from ..kernels.rootfs import ensure_initramfs, ensure_ssh_key


def list_lines(debian: bool = False) -> Iterator[str]:
    """``pokelab kernels``: each catalog kernel (its flags, cached or not), then each kernel built
    here; ``debian``: instead each Debian kernel in pokelab's apt sources (line, flavour, release,
    version, suites, whether it has -dbg and is cached)."""
    cat, cache = Catalog.load(), cache_dir(create=debian)  # the catalog's listing writes nothing
    if debian:
        for d in available(cache, None, with_suites=True):
            flags = [d.version, ",".join(d.suites) or "?",
                     "with -dbg" if d.has_dbg else "no -dbg: not usable"]
            if d.has_dbg and is_cached(d.spec(), cache):
                flags.append("cached")
            yield f"{d.line:5} {d.flavour:11} {d.release:32} {', '.join(flags)}"
        return
    for k in cat.kernels:
        flags = [k.wants, *(["default"] if k.default else []), resolution_words(k, cache)]
        yield f"{k.id:12} {', '.join(flags)}"
    for kid, entry in sorted(custom_registry(cache).items()):
        try:
            meta = json.loads((Path(entry["dir"]) / "meta.json").read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue  # removed by hand: not listed
        patches = ", ".join(Path(p).name for p in meta.get("patches", [])) or "no patches"
        yield f"{kid} {meta.get('release', '?')}  built from {meta.get('source', '?')} ({patches})"


def _ago(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h ago" if seconds < 48 * 3600 else f"{seconds / 86400:.0f} d ago"


def resolution_words(k: KernelRequest, cache: Path) -> str:
    """What a catalog kernel is here, asking no archive: the release it resolved to and when (a line
    older than the lists' refresh age is resolved again when next used), or that it never was;
    and whether it is cached."""
    got = resolution(k, cache)
    if got is None:
        return "never resolved here (the archive is asked when first used), not cached"
    spec, age = got
    cached = "cached" if is_cached(spec, cache) else "not cached"
    if age is None:  # a pinned ABI
        return cached
    when = _ago(age) if age >= 0 else "at a later clock time"
    again = "; asked again when next used" if not 0 <= age < MAX_AGE_S else ""
    return f"{cached}: {spec.release} ({spec.version}), resolved {when}{again}"


def remove_lines(names: Sequence[str], debian: bool = False) -> Iterator[str]:
    """``pokelab kernels --remove NAME...``: built kernels (``custom-*``, or ``built`` for all) and
    fetched ones (:func:`.removal.plan`, UsageError before anything is deleted); a line per
    kernel removed (MB freed), the total, and what is left on purpose.  ``debian`` (``--debian``,
    which lists the archive) does not go with it: UsageError."""
    if debian:
        raise UsageError("--remove does not go with --debian (--debian lists the archive, --remove "
                         "frees this cache)")
    cache = cache_dir(create=False)  # a cache never made has nothing to remove: a name is a usage error
    plan = removal.plan(names, Catalog.load(), cache)
    total = 0
    for one in plan.removals:
        freed = removal.carry_out(one, cache)
        total += freed
        yield f"removed {one.name} ({freed / 1e6:.0f} MB)"
    yield f"freed {total / 1e6:.0f} MB; a removed Debian kernel is fetched again when next used"
    for kept in plan.kept:
        yield f"left {kept.size / 1e6:.0f} MB: {kept.what}"


def fetch_images(kernel_ids: Sequence[str] | None) -> Iterator[str]:
    """``pokelab images``: fetch and prepare each kernel (catalog ids, ``["all"]``; None: the default)
    and its initramfs, a line each, then the SSH key's line."""
    cat = Catalog.load()
    if kernel_ids and "all" in kernel_ids and len(kernel_ids) > 1:
        raise UsageError("--kernel all names every catalog kernel: give it alone")
    wanted = list(cat.kernels) if kernel_ids == ["all"] else [
        cat.lookup(k) for k in (kernel_ids or [cat.default.id])]
    cache = cache_dir()
    key = ensure_ssh_key(cache)
    for request in wanted:
        k = ensure_kernel(resolve_spec(request, cache), cache)
        initrd = ensure_initramfs(k, cache, {})
        yield f"{request.id:10} {k.package} {k.version}  build-id {k.build_id[:16]}  initramfs {initrd.name}"
    yield f"ssh key    {key}"


@dataclass(frozen=True)
class BuildRequest:
    """``pokelab build-kernel``: a tree, patches and config fragments, built out of tree."""

    source: Path | None = field(default=None, metadata=option(
        "kernel tree, plain or git (default: Debian's linux-source-6.1, unpacked once)", metavar="DIR",
        path="dir"))
    patches: tuple[Path, ...] = field(default=(), metadata=option(
        "patches applied with patch -p1 to a scratch copy, in order (a dir: its *.patch)", nargs="+",
        metavar="DIR|FILE", path="text-or-dir"))
    config_fragment: tuple[Path, ...] = field(default=(), metadata=option(
        "config fragments merged on allnoconfig (default: images/config/*.config)", nargs="+",
        metavar="FILE", path="text"))
    out: Path | None = field(default=None, metadata=option(
        "make O= dir (default: under the cache)", metavar="DIR", path="out-dir"))
    jobs: int = field(default=2, metadata=option("make -j", flag="-j --jobs", metavar="N", type=int))


def build(req: BuildRequest, say: Callable[[str], None]) -> str:
    """``pokelab build-kernel``: build and register; the line naming what was built.  A failed
    patch, config or make is a :class:`~orchestrator.kernels.kbuild.BuildError` whose tail (the
    log) is shown without ``-v`` too.  UsageError for ``-j`` below 1, before anything is written."""
    if req.jobs < 1:
        raise UsageError(f"-j {req.jobs}: make's jobs must be at least 1")
    try:
        res = build_kernel(req.source, list(req.patches), list(req.config_fragment), req.out, jobs=req.jobs,
                           say=say)
    except BuildError as exc:
        exc.tail_always = True
        raise
    return (f"{res.kernel_id} release {res.release} build-id {res.build_id} "
            f"built in {res.seconds:.0f} s ({res.kernel_dir})")
