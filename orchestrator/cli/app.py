"""``pokelab``'s entry point: parse, set up logging and signals, call the command, map errors to exits.

The only module that exits the process or sets up logging.  A command returns its
exit status; an error becomes one ``pokelab: <verdict>: <title>`` line and its
verdict's status (:data:`orchestrator.core.verdict.EXIT_CODES`).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from ..core.errors import PokelabError, RunInterrupted, Terminated, signal_exception
from ..core.verdict import EXIT_CODES, exit_status, verdict_for
from .parser import build_parser


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated(128 + signum)


def _logging(verbose: int) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose >= 2 else logging.WARNING,
                        format="pokelab: %(message)s", stream=sys.stderr)
    logging.getLogger("orchestrator").setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose < 2:  # libraries' own chatter (connection retries, key exchange)
        for name in ("qemu.qmp", "paramiko"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bisect = "--bisect-exit-codes" in argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad command line must not mark a revision bad (verdict.BISECT_USAGE_EXIT)
        if bisect and exc.code == EXIT_CODES["USAGE"]:
            return exit_status("USAGE", bisect=True)
        raise
    _logging(args.verbose)
    signal.signal(signal.SIGTERM, _on_sigterm)
    func: Callable[[Any], int] = args.func
    try:
        return func(args)
    except PokelabError as exc:
        verdict = verdict_for(exc)
        print(f"pokelab: {verdict.lower().replace('_', ' ')}: {exc.title}", file=sys.stderr)
        if exc.tail and args.verbose:
            print(exc.tail, file=sys.stderr)
        return exit_status(verdict, bisect=bool(getattr(args, "bisect_exit_codes", False)))
    except RunInterrupted as exc:  # its verdict.json is written
        print(f"pokelab: interrupted by {exc.signal_name}", file=sys.stderr)
        return exc.code
    except BaseException as exc:  # Ctrl-C, SIGTERM; a signal's exception raised inside a lock's
        sig = signal_exception(exc)  # wait may surface as another error ("release unlocked lock")
        if sig is None or (isinstance(sig, SystemExit) and not isinstance(sig, Terminated)):
            raise
        if isinstance(sig, KeyboardInterrupt):
            print("pokelab: interrupted", file=sys.stderr)
            return 130
        print("pokelab: terminated", file=sys.stderr)
        code = getattr(sig, "code", None)
        return code if isinstance(code, int) else 143
