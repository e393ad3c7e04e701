"""Console crash detection: a table of oops formats -> (type, title).  Pure.

Modelled on syzkaller's pkg/report: each format is a regular expression over
one console line; the first line that matches gives the crash type and a title.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Crash:
    type: str
    title: str
    line: int  # index of the console line that matched


# (type, regex) in priority order; the title is the matched text, cleaned.
FORMATS: tuple[tuple[str, str], ...] = (
    ("oops-int3", r"Oops: int3"),
    ("gpf", r"general protection fault.*"),
    ("bug", r"BUG: .*"),
    ("kernel-bug", r"kernel BUG at .*"),
    ("oops", r"Oops: .*"),
    ("warning", r"WARNING: .*"),
    ("soft-lockup", r"watchdog: BUG: soft lockup.*"),
    ("hard-lockup", r"Watchdog detected hard LOCKUP.*"),
    ("rcu-stall", r"rcu: INFO: rcu_\w+ (self-)?detected stalls.*"),
    ("hung-task", r"INFO: task .* blocked for more than \d+ seconds.*"),
    ("panic", r"Kernel panic - not syncing: .*"),
)

_COMPILED = tuple((kind, re.compile(rx)) for kind, rx in FORMATS)
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")
_BANNER = re.compile(r"Linux version \d+\.\d+")


def classify(line: str) -> tuple[str, str] | None:
    """(type, title) for a console line that starts a crash report, else None."""
    body = _TIMESTAMP.sub("", line.strip())
    for kind, rx in _COMPILED:
        m = rx.search(body)
        if m:
            title = re.sub(r"\s+", " ", m.group(0)).strip()
            title = re.sub(r"\[#\d+\]|CPU: \d+ PID: \d+.*", "", title).strip()
            return kind, title
    return None


def scan(lines: list[str]) -> list[Crash]:
    """Every crash start in a console log, plus a second boot banner (an unexpected reboot)."""
    found: list[Crash] = []
    banners = 0
    for i, line in enumerate(lines):
        if _BANNER.search(line):
            banners += 1
            if banners == 2:
                found.append(Crash("reboot", "second boot banner: the guest rebooted", i))
            continue
        hit = classify(line)
        if hit:
            found.append(Crash(hit[0], hit[1], i))
    return found
