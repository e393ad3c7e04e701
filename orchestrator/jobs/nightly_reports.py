"""The nightly matrix's reports, from its summary (``nightly.py``): JUnit XML, KCIDB, the HTML page.

All pure (a summary dict in, text or a dict out), tested on a recorded summary.
The page is rendered from ``data/nightly.html.j2`` with its SVG charts
(``data/nightly_charts.html.j2``); their geometry is computed here.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from ..core.census import USERS, add_counts, order_users
from . import templates

ORIGIN = "pokelab"

#: verdict -> (JUnit outcome, KCIDB test status).  The exit status comes from verdict.EXIT_CODES
#: (see ``nightly.exit_key``); "MISSING" is a planned cell with no result (an interrupted run).
OUTCOMES: dict[str, tuple[str, str]] = {
    "PASS": ("pass", "PASS"),
    "FAIL": ("failure", "FAIL"),
    "CRASH": ("failure", "FAIL"),
    "BOOT_FAIL": ("failure", "FAIL"),
    "INFRA": ("error", "ERROR"),
    "INCONCLUSIVE": ("error", "ERROR"),
    "UNSUPPORTED": ("skipped", "SKIP"),
    "MISSING": ("error", "MISS"),
}


# --------------------------------------------------------------------------- JUnit


def junit_xml(summary: dict[str, Any]) -> str:
    """One <testsuite name="pokelab.KERNEL"> per kernel, one <testcase> per scenario."""
    root = ET.Element("testsuites", name="pokelab nightly")
    by_kernel: dict[str, list[dict[str, Any]]] = {}
    for r in summary["results"]:
        by_kernel.setdefault(r["kernel_id"], []).append(r)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for kernel, rs in by_kernel.items():
        suite = ET.SubElement(root, "testsuite", name=f"pokelab.{kernel}")
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        time_sum = 0.0
        for r in rs:
            tc = ET.SubElement(suite, "testcase", classname=f"pokelab.{kernel}", name=r["scenario"],
                               time=f"{r.get('duration_s', 0):.1f}")
            time_sum += float(r.get("duration_s", 0))
            outcome = OUTCOMES.get(r["verdict"], ("error", "ERROR"))[0]
            message = f"{r['verdict']}: {'; '.join(r.get('reasons', []))}"
            if r.get("known_issue"):
                outcome = "skipped"
                message = f"known issue {r['known_issue']['id']}: {message}"
            counts["tests"] += 1
            if outcome == "failure":
                el = ET.SubElement(tc, "failure", message=message, type=r["verdict"])
                counts["failures"] += 1
            elif outcome == "error":
                el = ET.SubElement(tc, "error", message=message, type=r["verdict"])
                counts["errors"] += 1
            elif outcome == "skipped":
                el = ET.SubElement(tc, "skipped", message=message)
                counts["skipped"] += 1
            else:
                el = None
            details = [message] + [f"{c['type']}: {c['title']}" for c in r.get("crashes", [])]
            if r.get("change"):
                details.append(f"change: {r['change']} (previous: {r.get('previous_verdict')})")
            if el is not None:
                el.text = "\n".join(details)
            out = ET.SubElement(tc, "system-out")
            out.text = (f"kernel {r.get('kernel')}\ntraps judged {r.get('traps_judged', 0)}, "
                        f"violations {r.get('violations', 0)}\nartifacts {r.get('artifacts', '')}\n")
        suite.set("time", f"{time_sum:.1f}")
        for k, v in counts.items():
            suite.set(k, str(v))
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --------------------------------------------------------------------------- KCIDB


def kcidb(summary: dict[str, Any], artifacts_url: str | None = None) -> dict[str, Any]:
    """KCIDB I/O (schema v4) objects: one checkout for the run, one build per kernel,
    one test per kernel x scenario.  docs/nightly.md describes the shape.

    KCIDB wants absolute URLs: ``output_files`` is filled only with ``artifacts_url`` (where
    the report dir is published); without it the relative paths go to ``misc.artifact_files``.
    """
    run = re.sub(r"[^A-Za-z0-9_.-]", "_", str(summary.get("run_id") or "run"))
    checkout_id = f"{ORIGIN}:{run}"
    builds: dict[str, dict[str, Any]] = {}
    tests = []
    for r in summary["results"]:
        kid = re.sub(r"[^A-Za-z0-9_.+-]", "_", r["kernel_id"])
        build_id = f"{ORIGIN}:{run}:{kid}"
        if build_id not in builds:
            builds[build_id] = {"id": build_id, "origin": ORIGIN, "checkout_id": checkout_id,
                                "architecture": "x86_64", "valid": True,
                                "comment": f"Debian cloud kernel {r.get('kernel', r['kernel_id'])}",
                                "misc": {"kernel_id": r["kernel_id"], "release": r.get("kernel"),
                                         "build_id": r.get("build_id")}}
        status = OUTCOMES.get(r["verdict"], ("error", "ERROR"))[1]
        test: dict[str, Any] = {
            "id": f"{build_id}:{r['scenario']}", "origin": ORIGIN, "build_id": build_id,
            "path": f"pokelab.{r['scenario']}", "status": status,
            "comment": f"{r['verdict']}: {'; '.join(r.get('reasons', []))}"[:500],
            "misc": {"verdict": r["verdict"], "traps_judged": r.get("traps_judged", 0),
                     "violations": r.get("violations", 0),
                     "crashes": [c["title"] for c in r.get("crashes", [])],
                     "known_issue": (r.get("known_issue") or {}).get("id"), "change": r.get("change")},
        }
        if r.get("start_time"):
            test["start_time"] = r["start_time"]
        if r.get("duration_s") is not None:
            test["duration"] = float(r["duration_s"])
        if r.get("artifacts") and r.get("files"):
            rel = [f"{r['artifacts']}/{f}" for f in r["files"]]
            if artifacts_url:
                base = artifacts_url.rstrip("/")
                test["output_files"] = [{"name": f, "url": f"{base}/{p}"} for f, p in zip(r["files"], rel,
                                                                                        strict=True)]
            else:
                test["misc"]["artifact_files"] = rel
        tests.append(test)
    checkout = {"id": checkout_id, "origin": ORIGIN, "valid": True,
                "comment": "pokelab nightly: text_poke int3 emulation under the GDB probe",
                "misc": {"shard": summary.get("shard"), "merged_from": summary.get("merged_from")}}
    if summary.get("started"):
        checkout["start_time"] = summary["started"]
    return {"version": {"major": 4, "minor": 3}, "checkouts": [checkout],
            "builds": list(builds.values()), "tests": tests}


# --------------------------------------------------------------------------- HTML

_COLORS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "CRASH": "#a40e26", "BOOT_FAIL": "#cf222e",
           "INFRA": "#9a6700", "INCONCLUSIVE": "#9a6700", "UNSUPPORTED": "#6e7781", "MISSING": "#6e7781"}
_LINE_COLORS = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#57606a")


def plot_geometry(timeline: list[dict[str, Any]], width: int = 420,
                  height: int = 130) -> dict[str, Any] | None:
    """The timeline plot's geometry (px): axes, one step path per site, legend rows; None if no traps.

    ``timeline`` is a result's ``timeline`` (see the module docstring): points ``[t (s), cumulative
    traps]``.  Drawn by the ``timeline_plot`` macro of ``data/nightly_charts.html.j2``.
    """
    if not timeline:
        return None
    pts = [p for s in timeline for p in s["points"]]
    t0 = min(p[0] for p in pts)
    t1 = max(p[0] for p in pts)
    ymax = max(p[1] for p in pts)
    left, right, top, bottom = 34, 8, 8, 20
    pw, ph = width - left - right, height - top - bottom
    span = max(t1 - t0, 1e-6)

    def x(t: float) -> float:
        return left + (t - t0) / span * pw

    def y(n: float) -> float:
        return top + ph - n / max(ymax, 1) * ph

    lines = []
    for i, s in enumerate(timeline):
        d = [f"M{x(t0):.1f},{y(0):.1f}"]
        prev = 0
        for t, n in s["points"]:
            d.append(f"L{x(t):.1f},{y(prev):.1f}L{x(t):.1f},{y(n):.1f}")
            prev = n
        d.append(f"L{x(t1):.1f},{y(prev):.1f}")
        lines.append({"d": "".join(d), "color": _LINE_COLORS[i % len(_LINE_COLORS)],
                      "legend_y": height + 12 + 16 * i - 4, "name": s["name"], "traps": s["traps"]})
    return {"width": width, "height": height, "svg_height": height + 16 * len(timeline), "left": left,
            "top": top, "pw": pw, "ph": ph, "ymax": ymax, "t0": t0, "t1": t1, "lines": lines}


#: one color per text_poke user (census.USERS), for the users chart
_USER_COLORS = dict(zip(USERS, ("#0969da", "#8250df", "#1a7f37", "#bf8700", "#cf222e", "#57606a", "#afb8c1"),
                        strict=True))


def users_total(results: Iterable[dict[str, Any]]) -> dict[str, int]:
    """{text_poke user: judged traps} summed over the results that have a census."""
    total: dict[str, int] = {}
    for r in results:
        add_counts(total, r.get("users"))
    return order_users(total)


def users_geometry(counts: dict[str, int], width: int = 420, bar: int = 16) -> dict[str, Any] | None:
    """The users chart's bars (px; longest = ``width`` less the labels), None if no census.

    Drawn by the ``users_chart`` macro of ``data/nightly_charts.html.j2``.
    """
    counts = order_users(counts)
    if not counts:
        return None
    label_w, top = 90, max(counts.values())
    scale = (width - label_w - 60) / max(top, 1)
    bars = [{"user": user, "n": n, "y": i * (bar + 4), "w": max(1.0, n * scale),
             "color": _USER_COLORS.get(user, "#6e7781")} for i, (user, n) in enumerate(counts.items())]
    return {"width": width, "svg_height": (bar + 4) * len(counts), "bar": bar, "label_w": label_w,
            "bars": bars}


def users_chart(counts: dict[str, int], width: int = 420, bar: int = 16) -> str:
    """Inline SVG: one horizontal bar per text_poke user (judged traps), longest = ``width``."""
    return str(templates.macro(CHARTS, "users_chart")(users_geometry(counts, width, bar)))


_EXIT_WORDS = {0: "all passed", 1: "a failure or crash", 2: "infra error or incomplete"}
PAGE, CHARTS = "nightly.html.j2", "nightly_charts.html.j2"  # in orchestrator/jobs/data/


def html_report(summary: dict[str, Any], code: int) -> str:
    """A static page (no external assets): the matrix at a glance, then one section per cell.

    ``code`` is the run's exit status (``nightly.exit_status``).  Rendered from
    ``orchestrator/jobs/data/nightly.html.j2`` (Jinja2, autoescape on).
    """
    results = summary["results"]
    counts: dict[str, int] = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    views = {(r["kernel_id"], r["scenario"]): {
        "plot": plot_geometry(r.get("timeline", [])),
        "users": order_users(r.get("users") or {}),
        "batch_users": order_users(r.get("batch_users") or {}) if r.get("batch_users") else {},
    } for r in results}
    return templates.render(
        PAGE, summary=summary, run_id=str(summary.get("run_id")), code=code,
        exit_words=_EXIT_WORDS.get(code, "?"), counts=sorted(counts.items()), colors=_COLORS,
        new_failures=sum(r.get("change") == "new-failure" and not r.get("known_issue") for r in results),
        known_issues=sum(bool(r.get("known_issue")) for r in results),
        users=users_geometry(users_total(results)),
        kernels=list(dict.fromkeys(r["kernel_id"] for r in results)),
        scenarios=list(dict.fromkeys(r["scenario"] for r in results)),
        cell={(r["kernel_id"], r["scenario"]): r for r in results}, views=views)
