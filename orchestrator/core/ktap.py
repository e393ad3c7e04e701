"""KTAP v1 output for ``pokelab repro`` and ``pokelab nightly`` (``--format ktap``).

Pure: result dicts in, text out.  The format is the kernel's
(Documentation/dev-tools/ktap.rst, as kselftest and KUnit print it)::

    KTAP version 1
    1..2
    # ftrace-function on 6.1.0-56-cloud-amd64: 86 trap(s) judged, 0 violations
    ok 1 6.1:ftrace-function
    not ok 2 6.1:ops-one
    # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0

How pokelab's verdicts map to KTAP results (one table, :data:`KTAP_RESULT`):

* PASS: ``ok``;
* UNSUPPORTED, SKIP: ``ok ... # SKIP <reason>`` (the kernel lacks what the test needs);
* FAIL, CRASH, BOOT_FAIL: ``not ok`` (the kernel did wrong);
* KNOWN_ISSUE: ``not ok ... # TODO <id>`` (a known failure; TAP's TODO does not fail the run);
* INFRA, INCONCLUSIVE, INCOMPLETE: ``not ok ... # ERROR <verdict>`` (nothing proven either way: a
  KTAP reader that counts it as a failure errs on the safe side; the diagnostic line says which).

Test names must not hold ``#`` (the directive separator): they are replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: verdict -> (ok?, directive or None)
KTAP_RESULT: dict[str, tuple[bool, str | None]] = {
    "PASS": (True, None),
    "UNSUPPORTED": (True, "SKIP"),
    "SKIP": (True, "SKIP"),
    "FAIL": (False, None),
    "CRASH": (False, None),
    "BOOT_FAIL": (False, None),
    "KNOWN_ISSUE": (False, "TODO"),
    "INFRA": (False, "ERROR"),
    "INCONCLUSIVE": (False, "ERROR"),
    "INCOMPLETE": (False, "ERROR"),
}


def _clean(text: str) -> str:
    return " ".join(str(text).replace("#", "_").split())


def _diag(text: str) -> Iterable[str]:
    for line in str(text).splitlines() or [""]:
        yield f"# {line}".rstrip()


def test_line(number: int, name: str, verdict: str, reasons: Sequence[str] = ()) -> str:
    """One ``ok``/``not ok`` line.  ``verdict`` not in :data:`KTAP_RESULT` is a ``ValueError``."""
    try:
        ok, directive = KTAP_RESULT[verdict]
    except KeyError:
        raise ValueError(f"no KTAP result for verdict {verdict!r}") from None
    line = f"{'ok' if ok else 'not ok'} {number} {_clean(name)}"
    if directive == "SKIP":
        line += f" # SKIP {_clean('; '.join(reasons))}".rstrip()
    elif directive == "TODO":
        line += f" # TODO {_clean('; '.join(reasons))}".rstrip()
    elif directive == "ERROR":
        line += f" # ERROR {verdict}"
    return line


def totals(verdicts: Iterable[str]) -> str:
    """kselftest's closing line: ``# Totals: pass:P fail:F xfail:X xpass:0 skip:S error:E``."""
    count = {"pass": 0, "fail": 0, "xfail": 0, "skip": 0, "error": 0}
    for v in verdicts:
        ok, directive = KTAP_RESULT[v]
        key = ("skip" if directive == "SKIP" else "xfail" if directive == "TODO"
               else "error" if directive == "ERROR" else "pass" if ok else "fail")
        count[key] += 1
    return (f"# Totals: pass:{count['pass']} fail:{count['fail']} xfail:{count['xfail']} xpass:0 "
            f"skip:{count['skip']} error:{count['error']}")


def document(tests: Sequence[tuple[str, str, Sequence[str], Sequence[str]]]) -> str:
    """A whole KTAP v1 document.

    ``tests``: ``(name, verdict, reasons, diagnostics)`` per test, in order; the
    diagnostics (and, for a test that did not pass, its reasons) are printed as ``#``
    lines before its result line, as kselftest does.
    """
    out = ["KTAP version 1", f"1..{len(tests)}"]
    for i, (name, verdict, reasons, diagnostics) in enumerate(tests, 1):
        for d in diagnostics:
            out.extend(_diag(d))
        if verdict != "PASS" and KTAP_RESULT.get(verdict, (False, None))[1] not in ("SKIP", "TODO"):
            for r in reasons:
                out.extend(_diag(f"{verdict}: {r}"))
        out.append(test_line(i, name, verdict, reasons))
    out.append(totals(t[1] for t in tests))
    return "\n".join(out) + "\n"


def from_repro(result: Mapping[str, Any]) -> str:
    """``pokelab repro``'s JSON verdict (one run, or ``--runs N`` with its ``per_run`` list) as KTAP."""
    name = str(result.get("scenario") or "probe")
    runs = result.get("per_run")
    if isinstance(runs, list) and runs:
        tests = [(f"{name} run {i}", str(r.get("verdict", "INCOMPLETE")), tuple(r.get("reasons", ())),
                  (_summary_diag({"scenario": name, "kernel": result.get("kernel"), **r}),))
                 for i, r in enumerate(runs, 1)]
        return document(tests)
    return document([(name, str(result.get("verdict", "INCOMPLETE")), tuple(result.get("reasons", ())),
                      (_summary_diag(result),))])


def from_nightly(summary: Mapping[str, Any]) -> str:
    """A nightly ``summary.json`` as KTAP: one test per cell, named ``<kernel_id>:<scenario>``.

    A planned cell with no result is INCOMPLETE.
    """
    results = {(r.get("kernel_id"), r.get("scenario")): r for r in summary.get("results", [])}
    tests: list[tuple[str, str, Sequence[str], Sequence[str]]] = []
    for kernel_id, scenario in summary.get("planned", []):
        r = results.get((kernel_id, scenario))
        if r is None or r.get("verdict") == "MISSING":  # nightly.new_summary's record of a cell not run
            tests.append((f"{kernel_id}:{scenario}", "INCOMPLETE", ("the cell did not run",), ()))
            continue
        verdict = "KNOWN_ISSUE" if r.get("known_issue") else str(r.get("verdict", "INCOMPLETE"))
        reasons = tuple(r.get("reasons", ()))
        if verdict == "KNOWN_ISSUE":
            reasons = (f"known issue {r['known_issue'].get('id', '')}", *reasons)
        tests.append((f"{kernel_id}:{scenario}", verdict, reasons, (_summary_diag(r),)))
    return document(tests)


def _summary_diag(r: Mapping[str, Any]) -> str:
    kernel = r.get("kernel") or r.get("kernel_id") or "?"
    return (f"{r.get('scenario') or 'probe'} on {kernel}: traps seen {r.get('traps_seen', 0)}, "
            f"judged {r.get('traps_judged', 0)}, violations {r.get('violations', 0)}")
