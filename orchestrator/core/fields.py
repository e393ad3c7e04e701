"""Command-line metadata on typed requests' fields.

A job's request (a frozen dataclass) says, beside each field a user can set, how it
is named and explained on the command line: ``field(default=4, metadata=option("vCPUs",
metavar="N"))``.  The CLI builds its options from these (``cli/parser.py``), so a
default, its choices and its help are written once.  Pure data: no argparse here.
"""

from __future__ import annotations

from typing import Any

#: the kinds of user path a field takes (``orchestrator.host.userpaths`` checks each before use)
PATH_KINDS = ("file", "text", "dir", "file-or-dir", "text-or-dir", "out-dir", "out-file", "new-file")


def option(help: str, **kw: Any) -> dict[str, Any]:
    """``metadata=`` for a field set from the command line.

    ``flag``: the option's spelling (default ``--<field-name>``; ``"-j --jobs"``),
    ``metavar``, ``choices``, ``type`` (int, float, Path), ``path`` (one of
    :data:`PATH_KINDS`), ``action`` (``store_true``, ``append``), ``nargs``.  A default
    that is not None or False is appended to the help as ``(default X)``.
    """
    if kw.get("path") not in (None, *PATH_KINDS):
        raise ValueError(f"unknown path kind {kw['path']!r}")
    return {"cli": {"help": help, **kw}}
