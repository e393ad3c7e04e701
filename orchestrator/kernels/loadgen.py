"""The guest load generator: images/loadgen/loadgen.c, built static on the host, cached by content."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..host import procs
from ..host.cache import images_dir

GUEST_PATH = "/bin/loadgen"


def ensure_loadgen(cache: Path) -> Path:
    """Path of the static loadgen binary for this source (built once per source hash)."""
    src = images_dir() / "loadgen" / "loadgen.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    out = cache / "loadgen" / f"loadgen-{digest}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    gcc = procs.which("gcc", "gcc")
    tmp = out.with_suffix(".tmp")
    procs.run([gcc, "-static", "-O2", "-Wall", "-o", str(tmp), str(src)], timeout=120,
              what="building loadgen (needs gcc and libc6-dev)")
    tmp.rename(out)
    return out


def start_command(path: str, cpus: list[int], seconds: float = 0, pace: tuple[int, int] | None = None) -> str:
    """A guest shell command that starts one pinned loadgen per CPU in the background.

    Each writes its final count to /tmp/loadgen.<cpu>.out when stopped.
    ``pace`` = (N, US): sleep US microseconds after every N iterations.
    """
    extra = f" {pace[0]}/{pace[1]}" if pace else ""
    parts = [f"taskset -c {c} {GUEST_PATH} {path} {seconds:g}{extra} > /tmp/loadgen.{c}.out 2>&1 &"
             for c in cpus]
    return " ".join(parts) + " true"


STOP_COMMAND = ("killall -TERM loadgen 2>/dev/null; sleep 0.3; "
                "cat /tmp/loadgen.*.out 2>/dev/null; rm -f /tmp/loadgen.*.out")


def parse_counts(text: str) -> dict[int, int]:
    """{cpu: iterations} from the loadgen lines."""
    counts: dict[int, int] = {}
    for line in text.splitlines():
        if not line.startswith("loadgen "):
            continue
        fields = dict(w.split("=", 1) for w in line.split()[2:] if "=" in w)
        try:
            counts[int(fields["cpu"])] = counts.get(int(fields["cpu"]), 0) + int(fields["iterations"])
        except (KeyError, ValueError):
            continue
    return counts
