"""Checks of the paths a user gives (a command line, a request), made before anything runs.

Each check takes the path as given and returns it as a :class:`~pathlib.Path`, or
raises :class:`PathRefused` whose message is ``"<path>: <why>"`` (the CLI makes it one
usage line while parsing: ``pokelab: usage: argument --replay: FILE: ...``, exit 2), so
a bad path is refused before any tool, download or guest, and nothing is created
for it.  Filesystem reads only: ``os.stat``, ``open``, and a directory made and
removed at once to prove one can be made.

* :func:`input_file`: exists, not a directory, readable (the first block is
  read); ``text=True`` also refuses a binary file (a NUL byte or bytes that are
  not UTF-8 in the first 64 KiB).
* :func:`input_dir`: an existing, searchable directory.
* :func:`input_file_or_dir`: either of the above (``--patches DIR|FILE``).
* :func:`output_dir`: an existing writable directory, or one that can be
  created (its nearest existing parent is a directory where one can be made).
* :func:`output_file`: not a directory, writable if it exists; its directory
  must exist (``parent="exists"``) or be creatable (``parent="create"``).
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Literal

from ..core.errors import UsageError, one_line


class PathRefused(ValueError):
    """A path that fails its check; ``str()`` is ``"<path>: <why>"``."""


#: bytes of an input file read to prove it readable (and text, when asked)
PROBE_BYTES = 65536


def _bad(path: str, why: str) -> PathRefused:
    return PathRefused(one_line(f"{path}: {why}"))


def _strerror(exc: OSError) -> str:
    return exc.strerror or os.strerror(exc.errno or errno.EIO)


def _stat(path: str) -> os.stat_result | None:
    """The path's stat, None if it does not exist; an error for a path that cannot be looked at."""
    if not path or "\0" in path:
        raise _bad(path, "not a path")
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ENOTDIR (a file as a parent), EACCES, ELOOP, ENAMETOOLONG
        raise _bad(path, _strerror(exc)) from None


def _check_readable_file(path: str, st: os.stat_result, text: bool) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise _bad(path, "is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise _bad(path, "not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(PROBE_BYTES)
    except OSError as exc:
        raise _bad(path, f"cannot read: {_strerror(exc)}") from None
    if text:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < PROBE_BYTES)
        except UnicodeDecodeError:
            raise _bad(path, "a binary file, not text") from None
        if b"\0" in head:
            raise _bad(path, "a binary file, not text")


def input_file(path: str, text: bool = False) -> Path:
    """An existing readable file (text only with ``text=True``)."""
    st = _stat(path)
    if st is None:
        raise _bad(path, "no such file")
    _check_readable_file(path, st, text)
    return Path(path)


def input_dir(path: str) -> Path:
    """An existing directory one can list."""
    st = _stat(path)
    if st is None:
        raise _bad(path, "no such directory")
    if not stat.S_ISDIR(st.st_mode):
        raise _bad(path, "not a directory")
    try:
        os.listdir(path)
    except OSError as exc:
        raise _bad(path, f"cannot list: {_strerror(exc)}") from None
    return Path(path)


def input_file_or_dir(path: str, text: bool = False) -> Path:
    """An existing directory, or an existing readable file (text only with ``text=True``)."""
    st = _stat(path)
    if st is None:
        raise _bad(path, "no such file or directory")
    return input_dir(path) if stat.S_ISDIR(st.st_mode) else input_file(path, text)


def _can_make_in(path: str, base: Path, what: str) -> None:
    """Make and remove a directory in ``base``: the one proof that holds for root and on
    /proc, /sys or a read-only mount (``os.access`` says yes to root there)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".pokelab-check-", dir=base))
    except OSError as exc:
        raise _bad(path, f"{what} {base}: {_strerror(exc)}") from None


def _creatable_dir(path: str) -> None:
    """A directory at ``path`` exists and is writable, or can be made (with its parents)."""
    if not path.strip():
        raise _bad(path, "not a path")
    p = Path(os.path.abspath(path))
    st = _stat(str(p))
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise _bad(path, "exists and is not a directory")
        _can_make_in(path, p, "cannot write in")
        return
    base = p.parent
    while True:
        st = _stat(str(base))
        if st is not None:
            break
        if base.parent == base:
            raise _bad(path, "no existing parent directory")
        base = base.parent
    if not stat.S_ISDIR(st.st_mode):
        raise _bad(path, f"cannot be created: {base} is not a directory")
    _can_make_in(path, base, "cannot be created under")


def output_dir(path: str) -> Path:
    """A directory that exists and is writable, or can be created."""
    _creatable_dir(path)
    return Path(path)


def env_dir(var: str, value: str) -> None:
    """``$var``'s ``value`` names a directory that exists and is writable or can be created (as
    :func:`output_dir`); else UsageError: ``$var is <path>: <why>``."""
    try:
        output_dir(value)
    except PathRefused as exc:
        raise UsageError(f"${var} is {exc}") from None


def output_file(path: str, parent: Literal["exists", "create"] = "exists") -> Path:
    """A file to write: not a directory, writable if present; its directory exists
    (``parent="exists"``) or can be made (``parent="create"``)."""
    if parent not in ("exists", "create"):
        raise ValueError(f"parent must be 'exists' or 'create', not {parent!r}")
    st = _stat(path)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise _bad(path, "is a directory, not a file")
        if not os.access(path, os.W_OK):
            raise _bad(path, "not writable")
        return Path(path)
    folder = os.path.dirname(os.path.abspath(path))
    if parent == "create":
        try:
            _creatable_dir(folder)
        except PathRefused as exc:
            raise _bad(path, str(exc)) from None
        return Path(path)
    fst = _stat(folder)
    if fst is None or not stat.S_ISDIR(fst.st_mode):
        raise _bad(path, f"directory {folder} does not exist")
    _can_make_in(path, Path(folder), "cannot write in")
    return Path(path)
