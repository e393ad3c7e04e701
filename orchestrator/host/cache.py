"""Where pokelab keeps downloaded packages, extracted kernels and built images."""

from __future__ import annotations

import fcntl
import functools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import InfraError
from .userpaths import env_dir


def cache_dir(create: bool = True) -> Path:
    """Return the cache root (env ``POKELAB_CACHE`` or ``~/.cache/pokelab``), creating it unless
    ``create`` is False (``--dry-run`` touches nothing).

    UsageError if ``$POKELAB_CACHE`` is not a directory that exists and is writable, or can be
    created (checked as ``$POKELAB_ARTIFACTS`` is; set but empty: the default)."""
    env = os.environ.get("POKELAB_CACHE")
    if env:
        _check_env_cache(env)
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "pokelab"
    if not create:
        return path.resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InfraError(f"cannot create cache dir {path}: {exc.strerror}") from exc
    return path.resolve()


@functools.cache
def _check_env_cache(env: str) -> None:
    """``$POKELAB_CACHE`` checked once per value in a process (the check makes and removes a
    directory in it, and ``cache_dir`` is called at every step of a run)."""
    env_dir("POKELAB_CACHE", os.path.expanduser(env))


def path_key(path: Path) -> str:
    """A directory name for ``path``: its alphanumeric runs joined by '-', the last 60 characters."""
    return re.sub(r"[^A-Za-z0-9]+", "-", str(path)).strip("-")[-60:]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (created if needed), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 if it does not exist)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
    return total


def images_dir() -> Path:
    """The repo's ``images/`` directory, or env ``POKELAB_IMAGES``."""
    env = os.environ.get("POKELAB_IMAGES")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "images"
