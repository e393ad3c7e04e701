"""Errors that say who is to blame.

Every failure pokelab reports belongs to exactly one of these classes, and each
class carries the verdict it stands for (``verdict``; :func:`.verdict.verdict_for`);
verdicts map to exit codes in one table (:data:`.verdict.EXIT_CODES`).
"""

from __future__ import annotations

from .verdict import Verdict

#: the characters that break a terminal line, and how :func:`one_line` writes them
_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f"}


def one_line(text: str) -> str:
    """``text`` on one line: its line breaks written as escapes (``\\n``).  A user's string (a
    kernel id, a scenario name, a path) may hold some; an error title quoting it stays one line."""
    return text.translate(_BREAKS)


class PokelabError(Exception):
    """Base class.  ``title`` is one line (:func:`one_line`); ``tail`` is optional context
    (console tail, log tail)."""

    verdict = Verdict.INFRA
    #: the tail is what the user must read (a build's log): shown without ``-v`` too
    tail_always = False

    def __init__(self, title: str, tail: str = "") -> None:
        self.title = one_line(title)
        super().__init__(self.title)
        self.tail = tail


class UsageError(PokelabError):
    """Bad input from the user: wrong path, unknown id, KASLR on, busy port, ..."""

    verdict = Verdict.USAGE


class InfraError(PokelabError):
    """The host side broke: a tool is missing, a download failed, QEMU or GDB died."""

    verdict = Verdict.INFRA


class BootError(PokelabError):
    """The kernel did not reach the readiness marker (or SSH) in time."""

    verdict = Verdict.BOOT_FAIL


class KernelCrash(PokelabError):
    """The guest kernel crashed (oops, panic, BUG, lockup) while we ran."""

    verdict = Verdict.CRASH


class Unsupported(PokelabError):
    """The kernel lacks something the check needs; the reason says what."""

    verdict = Verdict.UNSUPPORTED


class RunInterrupted(KeyboardInterrupt):
    """A run ended by SIGINT or SIGTERM.  Not a PokelabError: nothing is to blame, and no
    ``except PokelabError`` (or ``except Exception``) may swallow it; a KeyboardInterrupt,
    so that what stops on Ctrl-C (pytest's session, a loop of runs) stops on it too.

    ``out``: the run's verdict dict, already written to its ``verdict.json`` with
    ``"interrupted": true``; ``code``: the exit status (128 + the signal number: 130, 143).
    """

    def __init__(self, out: dict, code: int, signal_name: str) -> None:  # type: ignore[type-arg]
        super().__init__(f"interrupted by {signal_name}")
        self.out = out
        #: the run's :class:`orchestrator.run.result.RunResult`, once written (set by ``execute``)
        self.result: object | None = None
        self.code = code
        self.signal_name = signal_name


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread by the CLI's handler (exit status 128 + 15)."""


def signal_exception(exc: BaseException | None, depth: int = 8) -> BaseException | None:
    """The KeyboardInterrupt (SIGINT) or SystemExit (the CLI's SIGTERM) behind ``exc``, if any.

    A signal's exception is raised wherever the main thread is; raised inside a
    ``threading.Condition.wait`` (an Event's wait), its unwinding can fail ("RuntimeError:
    release unlocked lock") or a wait's own error can replace it: either way the signal is
    only in the ``__context__`` chain, and the run was still interrupted.
    """
    while exc is not None and depth > 0:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return exc
        exc = exc.__cause__ or exc.__context__
        depth -= 1
    return None


def signal_stop(exc: BaseException) -> tuple[str, int] | None:
    """How a process ended by ``exc`` reports it: (what to say after ``pokelab: ``, exit status),
    or None if ``exc`` is not (and does not hide, :func:`signal_exception`) SIGINT or SIGTERM.

    A :class:`RunInterrupted` (its verdict.json is written) says which signal; another
    KeyboardInterrupt is ``interrupted`` (130); a :class:`Terminated` is ``terminated``
    (its code, 143 for SIGTERM); any other SystemExit is not a signal.
    """
    if isinstance(exc, RunInterrupted):
        return f"interrupted by {exc.signal_name}", exc.code
    sig = signal_exception(exc)
    if sig is None or (isinstance(sig, SystemExit) and not isinstance(sig, Terminated)):
        return None
    if isinstance(sig, KeyboardInterrupt):
        return "interrupted", 130
    code = getattr(sig, "code", None)
    return "terminated", code if isinstance(code, int) else 143
