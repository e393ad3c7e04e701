"""pokelab's own view of the Debian archive: the one module that runs apt.

pokelab does not use the host's package lists.  It keeps its own apt state
under ``<cache>/apt`` and its own source list (``images/apt/sources.list``:
bookworm, trixie and their updates/security/backports, sid, and sid's
``deb-src``), so the same kernels are found on a Debian 12 and a Debian 13
host.  Every apt call gets these options::

    -o Dir::Etc::SourceList=images/apt/sources.list
    -o Dir::Etc::SourceParts=<cache>/apt/sources.list.d      (empty)
    -o Dir::State::Lists=<cache>/apt/lists
    -o Dir::State::status=<cache>/apt/status                  (empty: nothing "installed")
    -o Dir::Cache=<cache>/apt/cache
    -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=<empty dir>

The host's apt.conf(.d) still applies for the rest (proxies, compressed
lists); nothing of the host's apt configuration is written.

``apt-get update`` into that list dir runs under a file lock, with a
deadline, when the lists are missing, older than :data:`MAX_AGE_S` or made
from another source list; a failed refresh with lists already present is
logged and the older lists are used (so a second run needs no network).

Package records are parsed with python-debian (:mod:`debian.deb822`) and
versions ordered by its dpkg comparison (:class:`debian.debian_support.Version`),
never by hand.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from functools import cmp_to_key
from pathlib import Path

from debian.deb822 import Packages, PkgRelation
from debian.debian_support import version_compare

from ..core.errors import InfraError, UsageError
from . import procs
from .cache import file_lock, images_dir

log = logging.getLogger(__name__)

#: lists younger than this are used without ``apt-get update`` (seconds)
MAX_AGE_S = 6 * 3600.0
UPDATE_TIMEOUT_S = 600.0
QUERY_TIMEOUT_S = 120.0
#: a kernel -dbg .deb is ~300-1000 MB
DOWNLOAD_TIMEOUT_S = 1800.0
_STAMP = ".pokelab-updated"
#: after a failed refresh with lists present, the next try waits this long (seconds)
RETRY_S = 900.0
_TRIED = ".pokelab-update-failed"
_NOT_FOUND = ("Unable to locate", "Can't select", "has no installation candidate", "404",
              "Couldn't find any package", "Unable to find a source package")


def sources_list() -> Path:
    """``images/apt/sources.list`` (or under env ``POKELAB_IMAGES``)."""
    return images_dir() / "apt" / "sources.list"


def newest_first(versions: Sequence[str]) -> list[str]:
    """Debian versions sorted newest first, in dpkg's order (python-debian's comparison)."""
    return sorted(versions, key=cmp_to_key(version_compare), reverse=True)


def parse_records(text: str) -> list[dict[str, str]]:
    """The stanzas of ``apt-cache show`` / ``Packages`` text, parsed by python-debian."""
    return [dict(p) for p in Packages.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False)
            if "Package" in p]


def deb_version(deb: Path) -> str:
    """The version a ``<package>_<version>_<arch>.deb`` file name carries (``%3a`` is the epoch's colon)."""
    return deb.name.split("_")[1].replace("%3a", ":")


def deb_depends(deb: Path) -> list[str]:
    """Package names in a .deb's Pre-Depends and Depends (first alternative of each), parsed by
    python-debian's :class:`~debian.deb822.PkgRelation`."""
    # with several fields asked, dpkg-deb -f prints a stanza ("Field: value" lines)
    res = procs.run(["dpkg-deb", "-f", str(deb), "Package", "Pre-Depends", "Depends"],
                    timeout=QUERY_TIMEOUT_S, what=f"dpkg-deb -f {deb.name}")
    records = parse_records(res.stdout.decode(errors="replace"))
    fields = records[0] if records else {}
    out: list[str] = []
    for field in ("Pre-Depends", "Depends"):
        if not fields.get(field, "").strip():
            continue
        for alternatives in PkgRelation.parse_relations(fields[field]):
            if alternatives and alternatives[0]["name"] not in out:
                out.append(alternatives[0]["name"])
    return out


def _not_found(message: str) -> bool:
    return any(k in message for k in _NOT_FOUND)


class Apt:
    """apt-get / apt-cache on pokelab's own sources and lists (``<cache>/apt``).

    ``debs_dir`` (default ``<cache>/debs``) holds downloaded .deb files; a package
    already there is used as is, newest version first, without asking apt (the
    cache is the pin).  ``max_age_s`` bounds how old the lists may be before a run
    refreshes them.
    """

    def __init__(self, cache: Path, *, debs_dir: Path | None = None, sources: Path | None = None,
                 max_age_s: float = MAX_AGE_S) -> None:
        self.root = cache / "apt"
        self.debs_dir = debs_dir if debs_dir is not None else cache / "debs"
        self.sources = sources if sources is not None else sources_list()
        self.max_age_s = max_age_s
        self._fresh = False

    # ------------------------------------------------------------------ options and lists

    @property
    def lists(self) -> Path:
        return self.root / "lists"

    def options(self) -> list[str]:
        """The ``-o`` options every apt call gets (see the module docstring)."""
        empty = self.root / "empty.d"
        pairs = {
            "Dir::Etc::SourceList": self.sources,
            "Dir::Etc::SourceParts": empty,
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": empty,
            "Dir::State::Lists": self.lists,
            "Dir::State::status": self.root / "status",
            "Dir::Cache": self.root / "cache",
            # the host may switch these binary caches off (Docker images do): each query would
            # then parse every list again
            "Dir::Cache::pkgcache": "pkgcache.bin",
            "Dir::Cache::srcpkgcache": "srcpkgcache.bin",
        }
        out: list[str] = []
        for key, value in pairs.items():
            out += ["-o", f"{key}={value}"]
        return out

    def _prepare(self) -> None:
        for d in (self.lists / "partial", self.root / "cache" / "archives" / "partial",
                  self.root / "empty.d"):
            d.mkdir(parents=True, exist_ok=True)
        status = self.root / "status"
        if not status.exists():  # touched again it would be newer than apt's pkgcache.bin, rebuilt then
            status.touch()
        if not self.sources.is_file():
            raise InfraError(f"pokelab's apt source list {self.sources} is missing")

    def _sources_digest(self) -> str:
        return hashlib.sha256(self.sources.read_bytes()).hexdigest()[:16]

    def lists_age_s(self) -> float | None:
        """Seconds since the last successful update from the current source list, None if never."""
        stamp = self.lists / _STAMP
        try:
            if stamp.read_text().strip() != self._sources_digest():
                return None
            return max(0.0, time.time() - stamp.stat().st_mtime)
        except OSError:
            return None

    def update(self, force: bool = False) -> None:
        """Refresh the lists if missing, stale or made from another source list (once per object).

        A failed refresh is an InfraError only when there are no usable lists; with older
        lists present it is logged and those are used, and the next try waits :data:`RETRY_S`.
        """
        if self._fresh and not force:
            return
        self._prepare()
        with file_lock(self.root / "update.lock"):
            age = self.lists_age_s()
            if not force and age is not None and age < self.max_age_s:
                self._fresh = True
                return
            tried = self.lists / _TRIED
            if not force and tried.is_file() and 0 <= time.time() - tried.stat().st_mtime < RETRY_S:
                self._fresh = True  # it failed minutes ago: use what is there
                return
            t0 = time.monotonic()
            log.info("apt-get update into %s", self.lists)
            res = procs.run(["apt-get", *self.options(), "-q", "update"], timeout=UPDATE_TIMEOUT_S,
                            what="apt-get update (pokelab's sources)", check=False)
            err = res.stderr.decode(errors="replace")
            # apt-get update exits 0 even when a source failed; "W: Failed"/"E:" lines say so
            failed = res.returncode != 0 or re.search(r"^(E:|W: (Failed|Some index))", err, re.M)
            if failed:
                lines = [ln for ln in err.splitlines() if ln.strip()]
                why = lines[-1] if lines else f"exit {res.returncode}"
                if age is None and not any(self.lists.glob("*_Packages*")):
                    raise InfraError(f"apt-get update of pokelab's sources failed: {why}", err[-2000:])
                log.warning("apt-get update failed (%s); using the lists from %s", why,
                            "an older update" if age is None else f"{age / 3600:.1f} h ago")
                tried.write_text(why + "\n")
            else:
                (self.lists / _STAMP).write_text(self._sources_digest() + "\n")
                tried.unlink(missing_ok=True)
                log.info("apt-get update took %.1fs", time.monotonic() - t0)
            self._fresh = True

    # ------------------------------------------------------------------ queries

    def _cache_query(self, args: Sequence[str], what: str) -> str:
        self.update()
        res = procs.run(["apt-cache", *self.options(), *args], timeout=QUERY_TIMEOUT_S, what=what,
                        check=False)
        return res.stdout.decode(errors="replace")

    def pkgnames(self, prefix: str) -> list[str]:
        """Every package name in the lists that starts with ``prefix`` (``apt-cache pkgnames``)."""
        return sorted(self._cache_query(["pkgnames", prefix], "apt-cache pkgnames").split())

    def records(self, packages: Sequence[str]) -> list[dict[str, str]]:
        """All versions' records of ``packages`` (``apt-cache show``), unknown names left out."""
        out: list[dict[str, str]] = []
        for i in range(0, len(packages), 300):
            out += parse_records(self._cache_query(["show", *packages[i:i + 300]], "apt-cache show"))
        return out

    def suites(self, packages: Sequence[str]) -> dict[str, set[str]]:
        """{package: suites that carry it} (``trixie-backports``), from ``apt-cache policy``."""
        got: dict[str, set[str]] = {}
        for i in range(0, len(packages), 300):
            for pkg, suites in self.parse_policy(
                    self._cache_query(["policy", *packages[i:i + 300]], "apt-cache policy")).items():
                got.setdefault(pkg, set()).update(suites)
        return got

    @staticmethod
    def parse_policy(text: str) -> dict[str, set[str]]:
        """{package: suites} from ``apt-cache policy`` output (its version tables' Packages lines)."""
        got: dict[str, set[str]] = {}
        pkg = ""
        for line in text.splitlines():
            if m := re.match(r"^(\S+):$", line):
                pkg = m.group(1)
            elif pkg and (m := re.match(r"^\s+\d+ \S+ (\S+)/\S+ \S+ Packages$", line)):
                got.setdefault(pkg, set()).add(m.group(1))
        return got

    # ------------------------------------------------------------------ binary packages

    def cached(self, package: str) -> Path | None:
        """The newest .deb of ``package`` already in ``debs_dir``, or None."""
        found = {deb_version(p): p for p in self.debs_dir.glob(f"{package}_*.deb")
                 if p.name.split("_", 1)[0] == package}
        return found[newest_first(list(found))[0]] if found else None

    def debs(self, packages: Sequence[str], suite: str | None = None) -> list[Path]:
        """Paths of the .deb files of ``packages``, downloading the missing ones in one go.

        ``suite`` (``bookworm``) takes each package from that suite (``apt-get download pkg/suite``).
        UsageError when the archive has no such package.
        """
        missing = [p for p in dict.fromkeys(packages) if self.cached(p) is None]
        if missing:
            self._download([f"{p}/{suite}" if suite else p for p in missing])
        out = []
        for pkg in packages:
            deb = self.cached(pkg)
            if deb is None:
                raise InfraError(f"apt-get download {pkg} produced no .deb file")
            out.append(deb)
        return out

    def deb(self, package: str, suite: str | None = None) -> Path:
        return self.debs([package], suite)[0]

    def _get(self, args: Sequence[str], what: str, cwd: Path, timeout: float) -> None:
        """apt-get with pokelab's options; a package the archive lacks is the user's UsageError."""
        res = procs.run(["apt-get", *self.options(), "-q", *args], timeout=timeout, what=what, cwd=cwd,
                        check=False)
        if res.returncode == 0:
            return
        err = res.stderr.decode(errors="replace")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit {res.returncode}"
        if _not_found(err):
            raise UsageError(f"not in pokelab's Debian sources ({self.sources}): {what}: {last}")
        raise InfraError(f"{what} failed: {last}", err[-2000:])

    def _download(self, specs: list[str]) -> None:
        self.update()
        # a name the lists lack is the user's mistake: one line, before a download is announced
        for name in dict.fromkeys(spec.split("/", 1)[0] for spec in specs):
            if name not in self.pkgnames(name):
                raise UsageError(f"{name}: not in pokelab's Debian sources ({self.sources})")
        self.debs_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.debs_dir / f".download-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            t0 = time.monotonic()
            log.info("apt-get download %s", " ".join(specs))
            self._get(["download", *specs], f"apt-get download {' '.join(specs)}", tmp, DOWNLOAD_TIMEOUT_S)
            for deb in tmp.glob("*.deb"):
                os.replace(deb, self.debs_dir / deb.name)
            log.info("downloaded %s in %.1fs", " ".join(specs), time.monotonic() - t0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ source packages

    def download_source(self, package: str, dest: Path, version: str | None = None) -> list[Path]:
        """Download a source package (sid's ``deb-src``) into ``dest``; its files, .dsc first.

        ``apt-get source --download-only package[=version]``: the .dsc, the upstream
        tarball(s) and the Debian tarball/diff, checked against the signed Sources index;
        nothing is unpacked.  Files already in ``dest`` with the right size are kept.
        UsageError when the sources have no such package or version.
        """
        spec = f"{package}={version}" if version else package
        dest.mkdir(parents=True, exist_ok=True)
        self.update()
        res = procs.run(["apt-get", *self.options(), "-q", "source", "--print-uris", spec],
                        timeout=QUERY_TIMEOUT_S, what=f"apt-get source --print-uris {spec}", cwd=dest,
                        check=False)
        if res.returncode != 0:
            self._get(["source", "--print-uris", spec], f"apt-get source {spec}", dest, QUERY_TIMEOUT_S)
        names = re.findall(r"^'[^']+' (\S+) \d+ ", res.stdout.decode(errors="replace"), re.M)
        if not names:
            raise InfraError(f"apt-get source --print-uris {spec} named no files")
        t0 = time.monotonic()
        self._get(["source", "--download-only", spec], f"apt-get source {spec}", dest, DOWNLOAD_TIMEOUT_S)
        files = [dest / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InfraError(f"apt-get source {spec} did not produce {', '.join(missing)}")
        log.info("source %s: %d files in %.1fs", spec, len(files), time.monotonic() - t0)
        return sorted(files, key=lambda f: not f.name.endswith(".dsc"))
