"""``pokelab nightly`` and ``pokelab merge``: the kernel x scenario matrix and its reports.

Everything here but :func:`run_matrix` and :func:`write_reports` is pure, so the shards,
annotations, exit status and merge are tested on a recorded summary; the reports (JUnit,
KCIDB, HTML) are rendered by ``nightly_reports.py``.  The cell
runner is passed in by the CLI: it is the same code path as ``pokelab repro``.

Summary format (``summary.json``, ``format`` = ``pokelab-nightly/1``)::

    {"format": ..., "run_id": ..., "started": ISO, "finished": ISO, "shard": "1/2" | null,
     "planned": [[kernel_id, scenario], ...],      # the cells this run (or shard) owns
     "results": [{"kernel_id", "kernel", "scenario", "verdict", "reasons", "traps_seen",
                  "traps_judged", "violations", "floor_traps", "duration_s", "sites",
                  "users": {text_poke user: judged traps}, "batch_users": {user: batches},
                  "crashes": [{"type", "title"}], "artifacts": dir relative to the summary,
                  "timeline": [{"site", "name", "points": [[t, cumulative], ...]}],
                  "change": null | "new-failure" | "still-failing" | "fixed",
                  "known_issue": null | {"id", "note", "url"}}, ...]}
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import json
import os
import re
import threading
import tomllib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..core import crash
from ..core.errors import RunInterrupted
from ..core.verdict import EXIT_CODES, FAILING
from ..gdb.ledger import read_trap_log
from .nightly_reports import html_report, junit_xml, kcidb

FORMAT = "pokelab-nightly/1"
Cell = tuple[str, str]  # (kernel id, scenario name)
Runner = Callable[[str, str, Path], dict[str, Any]]

ARTIFACT_FILES = ("console.log", "traps.jsonl", "mi.log", "qmp.jsonl", "verdict.json", "repro.sh")
SUMMARY_KEYS = ("kernel_id", "kernel", "scenario", "verdict", "reasons", "traps_seen", "traps_judged",
                "violations", "floor_traps", "text_mismatches", "sites", "opcodes", "accel", "smp",
                "build_id", "users", "batch_users", "qemu", "qemu_version")
MAX_POINTS = 120  # per site in the timeline plot
MAX_SITES = 6


# --------------------------------------------------------------------------- matrix and shards


def parse_list(text: str | None, what: str = "the list") -> list[str] | None:
    """``A,B,C`` -> its items (None for None).  ValueError naming ``what`` (the option) for an
    empty list, an empty item or an item named twice."""
    if text is None:
        return None
    items = [x.strip() for x in text.split(",")]
    if not any(items):
        raise ValueError(f"{what}: an empty list")
    if not all(items):
        raise ValueError(f"{what} {text}: an empty item")
    dups = sorted({x for x in items if items.count(x) > 1})
    if dups:
        raise ValueError(f"{what}: named twice: {', '.join(dups)}")
    return items


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``I/N`` (1-based) -> (I, N).  ValueError on anything else."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--shard {text}: expected I/N, e.g. 1/2")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise ValueError(f"--shard {text}: need 1 <= I <= N")
    return i, n


def matrix(kernels: Sequence[str], scenarios: Sequence[str]) -> list[Cell]:
    """Every (kernel, scenario) pair, in a fixed order (kernels, then scenarios, as given)."""
    return [(k, s) for k in kernels for s in scenarios]


def shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """Shard ``index`` of ``count`` (1-based): round-robin over the cells ordered by a hash
    of their names (so one kernel's slow scenarios do not all land in one shard).

    Deterministic (depends only on the set of cells) and balanced to within one cell; the
    shards 1..count are disjoint and together cover every cell exactly once.
    """
    ordered = sorted(set(cells), key=lambda c: (hashlib.sha1(f"{c[0]}/{c[1]}".encode()).hexdigest(), c))
    return [c for pos, c in enumerate(ordered) if pos % count == index - 1]


# --------------------------------------------------------------------------- known issues


def load_known_issues(path: Path) -> list[dict[str, Any]]:
    """The ``[[issue]]`` entries of a TOML file, or the ``issues`` list of a JSON file.

    Each entry: ``id`` (required), ``kernel`` and ``scenario`` (fnmatch globs, default
    ``*``), ``verdicts`` (list, default the failing ones and INCONCLUSIVE), ``match``
    (a regex searched in the reasons and crash titles, optional), ``note``, ``url``.
    """
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of issues, not {type(data).__name__}")
    issues = data.get("issue", data.get("issues", []))
    if not isinstance(issues, list):
        raise ValueError(f"{path}: expected a list of issues")
    for n, it in enumerate(issues):
        if not isinstance(it, dict) or not it.get("id"):
            raise ValueError(f"{path}: issue #{n + 1} has no id")
        if it.get("match"):
            re.compile(it["match"])
    return issues


def known_issue_for(result: dict[str, Any], issues: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The first known issue that explains a non-passing result, else None.  Pure."""
    verdict = result.get("verdict")
    if verdict in ("PASS", "UNSUPPORTED"):
        return None
    text = "\n".join([*result.get("reasons", []), *(c["title"] for c in result.get("crashes", []))])
    for it in issues:
        verdicts = it.get("verdicts") or [*sorted(FAILING), "INCONCLUSIVE"]
        if verdict not in verdicts:
            continue
        if not fnmatch.fnmatchcase(result.get("kernel_id", ""), it.get("kernel", "*")):
            continue
        if not fnmatch.fnmatchcase(result.get("scenario", ""), it.get("scenario", "*")):
            continue
        if it.get("match") and not re.search(it["match"], text):
            continue
        return {"id": it["id"], "note": it.get("note", ""), "url": it.get("url", "")}
    return None


def annotate(summary: dict[str, Any], previous: dict[str, Any] | None,
             issues: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Mark each result's ``change`` against a previous summary and its ``known_issue``.

    new-failure: failing (FAIL, CRASH, BOOT_FAIL) now and not failing before (or not run then);
    still-failing: failing in both; fixed: PASS now, failing before.  A failure that a known
    issue explains is reported with that issue and does not fail the run (see exit_key).
    Without a previous summary no change is marked.
    """
    before = {(r["kernel_id"], r["scenario"]): r["verdict"] for r in (previous or {}).get("results", [])}
    for r in summary["results"]:
        was = before.get((r["kernel_id"], r["scenario"]))
        change = None
        if r["verdict"] in FAILING:
            change = "still-failing" if was in FAILING else "new-failure"
        elif r["verdict"] == "PASS" and was in FAILING:
            change = "fixed"
        r["change"] = change if previous is not None else None
        r["previous_verdict"] = was
        r["known_issue"] = known_issue_for(r, issues)
    summary["compared_with"] = (previous or {}).get("run_id")
    return summary


# --------------------------------------------------------------------------- exit status


def exit_key(result: dict[str, Any]) -> str:
    """The ``verdict.EXIT_CODES`` row a matrix cell counts as.

    In a matrix an UNSUPPORTED cell is a skip (SKIP: 0), a result a known issue explains is
    KNOWN_ISSUE (0), a planned cell with no result is INCOMPLETE (2); otherwise the verdict.
    """
    verdict = result.get("verdict", "MISSING")
    if verdict == "MISSING":
        return "INCOMPLETE"
    if verdict == "UNSUPPORTED":
        return "SKIP"
    if result.get("known_issue"):
        return "KNOWN_ISSUE"
    return verdict if verdict in EXIT_CODES else "INFRA"


def exit_status(summary: dict[str, Any]) -> int:
    """0 all passed (or skipped / known), 1 a failure or crash, 2 infra error or incomplete.

    An infra error or a missing cell outranks a failure: the night is not complete.
    """
    codes = [EXIT_CODES[exit_key(r)] for r in summary["results"]]
    if not codes:
        return EXIT_CODES["INCOMPLETE"]
    return max(codes)


# --------------------------------------------------------------------------- one cell


def _timeline(traps: Path) -> list[dict[str, Any]]:
    """Per site (the busiest first): [[t, cumulative traps], ...], thinned to MAX_POINTS."""
    per_site: dict[str, tuple[str, list[float]]] = {}
    for rec in read_trap_log(traps):
        if "t" not in rec or not rec.get("site"):
            continue
        name = str(rec.get("symbol") or rec["site"])
        per_site.setdefault(rec["site"], (name, []))[1].append(float(rec["t"]))
    out = []
    for site, (name, ts) in sorted(per_site.items(), key=lambda kv: -len(kv[1][1]))[:MAX_SITES]:
        ts.sort()
        step = max(1, len(ts) // MAX_POINTS)
        idx = list(range(0, len(ts), step))
        if idx[-1] != len(ts) - 1:
            idx.append(len(ts) - 1)
        out.append({"site": site, "name": name, "traps": len(ts),
                    "points": [[round(ts[i], 3), i + 1] for i in idx]})
    return out


def result_record(out: dict[str, Any], artifacts: Path, base: Path, duration_s: float) -> dict[str, Any]:
    """The summary's record of one cell from its verdict dict and its artifact dir."""
    rec: dict[str, Any] = {k: out[k] for k in SUMMARY_KEYS if k in out}
    rec.setdefault("reasons", [])
    rec["duration_s"] = round(duration_s, 1)
    rec["phases"] = out.get("phases", {})
    console = artifacts / "console.log"
    crashes: list[dict[str, str]] = []
    if console.is_file():
        lines = [ln.replace("\r", "") for ln in console.read_text(errors="replace").splitlines()]
        seen = set()
        for c in crash.scan(lines):
            if (c.type, c.title) not in seen:
                seen.add((c.type, c.title))
                crashes.append({"type": c.type, "title": c.title})
    rec["crashes"] = crashes[:5]
    rec["timeline"] = _timeline(artifacts / "traps.jsonl")
    try:
        rec["artifacts"] = os.path.relpath(artifacts, base)
    except ValueError:
        rec["artifacts"] = str(artifacts)
    rec["files"] = [f for f in ARTIFACT_FILES if (artifacts / f).is_file()]
    return rec


def run_matrix(cells: Sequence[Cell], runner: Runner, out_dir: Path, jobs: int = 1,
               progress: Callable[[str], None] = lambda s: None,
               results: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Run every cell (``jobs`` at a time); results in the cells' order.

    ``runner(kernel, scenario, artifacts)`` returns the verdict dict (never raises for a
    verdict: the CLI's runner turns errors into INFRA and the like).  Each finished cell is
    also appended to ``results`` at once, so an interrupted night can still be reported.
    """
    sink = results if results is not None else []
    lock = threading.Lock()
    done = [0]

    def one(cell: Cell) -> dict[str, Any]:
        kernel, scenario = cell
        artifacts = out_dir / "runs" / kernel / scenario
        artifacts.mkdir(parents=True, exist_ok=True)
        t0 = _dt.datetime.now(_dt.UTC)
        interrupted: RunInterrupted | None = None
        try:
            out = runner(kernel, scenario, artifacts)
        except RunInterrupted as exc:  # the cell's verdict (never PASS) is kept, then the night stops
            interrupted = exc
            out = dict(exc.out)
        except Exception as exc:  # a bug in one cell must not lose the night
            out = {"verdict": "INFRA", "reasons": [f"{type(exc).__name__}: {exc}"]}
        out.setdefault("kernel_id", kernel)
        out.setdefault("kernel", kernel)
        out["scenario"] = scenario
        dur = (_dt.datetime.now(_dt.UTC) - t0).total_seconds()
        rec = result_record(out, artifacts, out_dir, dur)
        rec["start_time"] = t0.isoformat(timespec="seconds")
        with lock:
            sink.append(rec)
            done[0] += 1
            progress(f"[{done[0]}/{len(cells)}] {kernel} {scenario}: {rec['verdict']} "
                     f"({rec.get('traps_judged', 0)} traps judged, {dur:.0f} s)")
        if interrupted is not None:
            raise interrupted
        return rec

    if jobs <= 1:
        for c in cells:
            one(c)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, cells))
    order = {c: i for i, c in enumerate(cells)}
    return sorted(sink, key=lambda r: order.get((r["kernel_id"], r["scenario"]), len(order)))


def new_summary(planned: Sequence[Cell], results: list[dict[str, Any]], *, shard_spec: str | None,
                started: str, run_id: str | None = None) -> dict[str, Any]:
    have = {(r["kernel_id"], r["scenario"]) for r in results}
    results = list(results) + [
        {"kernel_id": k, "kernel": k, "scenario": s, "verdict": "MISSING",
         "reasons": ["planned but not run (interrupted?)"], "crashes": [], "timeline": [], "files": []}
        for k, s in planned if (k, s) not in have]
    run_id = run_id or f"{started.replace(':', '').replace('-', '')}-{os.getpid()}"
    return {"format": FORMAT, "run_id": run_id,
            "started": started, "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "shard": shard_spec, "planned": [list(c) for c in planned], "results": results}


# --------------------------------------------------------------------------- merge


def merge(summaries: Sequence[tuple[dict[str, Any], Path]], out_dir: Path) -> dict[str, Any]:
    """One summary from shard summaries (each with the dir it was read from).

    Artifact paths are rewritten relative to ``out_dir``.  A cell in two shards is an error
    (ValueError): shards of one matrix never overlap.
    """
    if not summaries:
        raise ValueError("nothing to merge")
    results: list[dict[str, Any]] = []
    planned: list[list[str]] = []
    seen: dict[tuple[str, str], str] = {}
    for data, where in summaries:
        if data.get("format") != FORMAT:
            raise ValueError(f"{where}: not a pokelab nightly summary (format {data.get('format')!r})")
        for r in data["results"]:
            key = (r["kernel_id"], r["scenario"])
            if key in seen:
                raise ValueError(f"{key[0]} x {key[1]} is in two summaries ({seen[key]} and {where})")
            seen[key] = str(where)
            r = dict(r)
            if r.get("artifacts") and not os.path.isabs(r["artifacts"]):
                r["artifacts"] = os.path.relpath(where / r["artifacts"], out_dir)
            results.append(r)
        planned.extend(p for p in data.get("planned", []) if p not in planned)
    results.sort(key=lambda r: (r["kernel_id"], r["scenario"]))
    first = summaries[0][0]
    return {"format": FORMAT, "run_id": first.get("run_id"),
            "started": min(d.get("started", "") for d, _ in summaries),
            "finished": max(d.get("finished", "") for d, _ in summaries),
            "shard": None, "merged_from": [d.get("shard") for d, _ in summaries],
            "planned": planned, "results": results}


# --------------------------------------------------------------------------- writing


def write_reports(summary: dict[str, Any], out_dir: Path, kcidb_path: Path | None = None,
                  artifacts_url: str | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out_dir / "junit.xml").write_text(junit_xml(summary))
    (out_dir / "index.html").write_text(html_report(summary, exit_status(summary)))
    if kcidb_path is not None:
        kcidb_path.write_text(json.dumps(kcidb(summary, artifacts_url), indent=1) + "\n")
