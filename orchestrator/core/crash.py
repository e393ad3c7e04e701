"""Console crash detection: a table of oops formats -> (type, title).  Pure.

Modelled on syzkaller's pkg/report: each format is a regular expression over
one console line and a title template; the first format that matches a line
gives the crash type and its title.  Titles are meant to be stable from run to
run (no CPU numbers, PIDs, addresses or timings) so that the same crash gets
the same title: ``{rip}`` in a template is the function of the first kernel
``RIP: 0010:func+0x..`` line within the next lines of the report (the template
part in ``[...]`` is dropped when there is none).  Tested on real console logs
in tests/data/console/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Crash:
    type: str
    title: str
    line: int  # index of the console line that matched


#: (type, regex, title template) in priority order.  Templates use the regex's named
#: groups, plus {rip}; a ``[...]`` part is kept only when every field in it is known.
FORMATS: tuple[tuple[str, str, str], ...] = (
    # 6.1 prints die()'s line bare ("int3: 0000 [#1] ..."); later kernels prefix it with "Oops: "
    ("oops-int3", r"Oops: int3\b|^int3: [0-9a-f]{4} \[#\d+\]", "Oops: int3[ in {rip}]"),
    ("soft-lockup", r"watchdog: BUG: soft lockup - CPU#\d+ stuck for \d+s! \[(?P<comm>[^:\]]+)",
     "BUG: soft lockup[ in {rip}]"),
    ("hard-lockup", r"Watchdog detected hard LOCKUP on cpu \d+", "hard LOCKUP[ in {rip}]"),
    ("rcu-stall", r"rcu: INFO: rcu_(?P<flavor>\w+) (?:self-)?detected stalls?",
     "INFO: rcu_{flavor} detected stall"),
    ("hung-task", r"INFO: task (?P<comm>.+?):\d+ blocked for more than \d+ seconds",
     "INFO: task hung: {comm}"),
    ("gpf", r"general protection fault", "general protection fault[ in {rip}]"),
    ("kernel-bug", r"kernel BUG at (?P<loc>\S+?)!?$", "kernel BUG at {loc}"),
    ("bug", r"BUG: (?P<what>[^,]+?)(?:,|:\s+\S+|$)", "BUG: {what}[ in {rip}]"),
    ("warning", r"WARNING: CPU: \d+ PID: \d+ at \S+ (?P<func>[\w.]+)\+", "WARNING in {func}"),
    ("warning", r"WARNING: (?P<what>.+)", "WARNING: {what}"),
    # "Oops: 0002 [#1] ..." (a page fault's error code) or "Oops: invalid opcode: 0000 [#1] ..."
    ("oops", r"Oops: (?:[0-9a-f]{4}\b|(?P<what>[^:\[]+?)\s*(?::|\[|$))", "Oops[: {what}][ in {rip}]"),
    ("oops", r"^(?P<what>[a-z][a-z ]+): [0-9a-f]{4} \[#\d+\]", "Oops: {what}[ in {rip}]"),
    ("panic", r"Kernel panic - not syncing: (?P<what>.*)", "Kernel panic - not syncing: {what}"),
)

#: (regex, replacement) applied to every title: names that differ between runs of one crash
NORMALIZE: tuple[tuple[str, str], ...] = (
    (r"\bkworker/[\w:+-]+", "kworker"),        # kworker/3:1 -> kworker
    (r"\b0x[0-9a-f]+\b", "ADDR"),
    (r"\b[0-9a-f]{12,16}\b", "ADDR"),
)
_NORMALIZE = tuple((re.compile(rx), rep) for rx, rep in NORMALIZE)
_COMPILED = tuple((kind, re.compile(rx), tpl) for kind, rx, tpl in FORMATS)
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")
_BANNER = re.compile(r"Linux version \d+\.\d+")
_RIP = re.compile(r"RIP: 0010:(?P<rip>[A-Za-z_][\w.]*)\+0x")
#: how many console lines after a report's first line are searched for its RIP
RIP_WINDOW = 40


def _render(tpl: str, fields: dict[str, str | None]) -> str:
    def opt(m: re.Match[str]) -> str:
        inner = m.group(1)
        names = re.findall(r"\{(\w+)\}", inner)
        return inner.format(**fields) if all(fields.get(n) for n in names) else ""

    text = re.sub(r"\[([^\]]*)\]", opt, tpl).format(**{k: v or "" for k, v in fields.items()})
    for rx, rep in _NORMALIZE:
        text = rx.sub(rep, text)
    return re.sub(r"\s+", " ", text).strip()


def classify(line: str, following: list[str] | None = None) -> tuple[str, str] | None:
    """(type, title) for a console line that starts a crash report, else None.

    ``following``: the console lines after it (for the ``{rip}`` of the title).
    """
    body = _TIMESTAMP.sub("", line.strip())
    for kind, rx, tpl in _COMPILED:
        m = rx.search(body)
        if not m:
            continue
        rip = None
        if "{rip}" in tpl:
            for nxt in (following or [])[:RIP_WINDOW]:
                r = _RIP.search(nxt)
                if r:
                    rip = r.group("rip")
                    break
        fields: dict[str, str | None] = {k: (v.strip() if v else v) for k, v in m.groupdict().items()}
        fields["rip"] = rip
        return kind, _render(tpl, fields)
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
        hit = classify(line, lines[i + 1:i + 1 + RIP_WINDOW])
        if hit:
            found.append(Crash(hit[0], hit[1], i))
    return found
