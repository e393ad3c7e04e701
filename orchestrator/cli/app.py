"""``pokelab``'s entry point: parse, set up logging and signals, call the command, map errors to exits.

The only module that exits the process or sets up logging.  A command returns its
exit status; an error becomes one ``pokelab: <verdict>: <title>`` line and its
verdict's status (:data:`orchestrator.core.verdict.EXIT_CODES`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from ..core.errors import PokelabError, Terminated, signal_stop
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
    from . import commands  # after parsing: a usage error never loads the jobs

    func = commands.handler(args.command)
    try:
        return func(args)
    except PokelabError as exc:
        verdict = verdict_for(exc)
        if exc.tail and exc.tail_always and not args.verbose:  # a build's log, then what failed
            print(exc.tail, file=sys.stderr)
        print(f"pokelab: {verdict.lower().replace('_', ' ')}: {exc.title}", file=sys.stderr)
        if exc.tail and args.verbose:
            print(exc.tail, file=sys.stderr)
        return exit_status(verdict, bisect=bool(getattr(args, "bisect_exit_codes", False)))
    except BrokenPipeError:  # stdout closed early (`pokelab kernels | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and no second error at exit
        return 128 + signal.SIGPIPE
    except BaseException as exc:  # Ctrl-C, SIGTERM: also when raised inside a lock's wait and hidden
        stop = signal_stop(exc)  # behind another error ("release unlocked lock")
        if stop is None:
            raise
        print(f"pokelab: {stop[0]}", file=sys.stderr)
        return stop[1]
