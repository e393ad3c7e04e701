"""The one result of a run, and the one writer of ``verdict.json``.

A :class:`RunResult` is frozen: the run's record (every key of ``verdict.json``,
documented in docs/verdict.md) is read-only once the run is judged.  Jobs read the
typed fields; reports and the JSON read :attr:`RunResult.record`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..core.errors import PokelabError
from ..core.verdict import Verdict, verdict_for

VERDICT_FILE = "verdict.json"


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class RunResult:
    """The verdict of one run (or of ``--runs N`` runs together) and everything recorded with it.

    ``verdict``/``reasons``: the claim about the kernel and why.  ``artifacts``: the run's
    dir (None: nothing was written, e.g. a request refused before any file was made).
    ``record``: the whole verdict document, read-only (nested dicts and lists frozen).
    """

    verdict: Verdict
    reasons: tuple[str, ...]
    artifacts: Path | None
    record: Mapping[str, Any]

    @classmethod
    def from_record(cls, out: Mapping[str, Any]) -> RunResult:
        """From a run's verdict dict (``verdict`` and ``reasons`` keys); ``traps_judged`` and
        ``violations`` default to 0 (a run refused before the probe judged none)."""
        rec = {"traps_judged": 0, "violations": 0, **out}
        rec["verdict"] = Verdict(str(rec["verdict"]))
        rec["reasons"] = [str(r) for r in rec.get("reasons", [])]
        art = rec.get("artifacts")
        return cls(rec["verdict"], tuple(rec["reasons"]), Path(art) if art else None, _freeze(rec))

    @classmethod
    def of_error(cls, exc: PokelabError, base: Mapping[str, Any]) -> RunResult:
        """An error before or outside the probed run (a kernel that cannot be fetched, ...): its
        verdict (:func:`verdict_for`) with the error's title as the reason."""
        rec = {**base, "verdict": verdict_for(exc), "reasons": [exc.title]}
        if exc.tail:
            rec["tail"] = exc.tail[-2000:]
        return cls.from_record(rec)

    @property
    def traps_judged(self) -> int:
        return int(self.record.get("traps_judged", 0))

    @property
    def violations(self) -> int:
        return int(self.record.get("violations", 0))

    @property
    def interrupted(self) -> bool:
        return bool(self.record.get("interrupted"))

    def get(self, key: str, default: Any = None) -> Any:
        return self.record.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def as_dict(self) -> dict[str, Any]:
        """A plain, mutable copy of the record (JSON types)."""
        return _thaw(self.record)  # type: ignore[no-any-return]

    def write(self, path: Path | None = None) -> Path:
        """Write ``verdict.json`` (into the artifact dir, or ``path``); the path written.

        The only writer of verdict files: runs, ``--runs`` summaries, nightly cells.
        """
        if path is None:
            if self.artifacts is None:
                raise ValueError("a result without an artifact dir needs a path")
            path = self.artifacts / VERDICT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path
