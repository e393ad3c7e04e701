"""Scenario files: a user's own scenario in TOML, run without editing the package (docs/scenarios.md).

``pokelab repro FILE.toml`` and ``pokelab nightly --scenarios FILE.toml,...`` load
them here.  A file holds what a :class:`scenario.Scenario` declaration holds::

    name = "kprobe-read"                      # required: lower-case letters, digits, dashes
    description = "one line"                  # required, at most 100 characters
    function = "ksys_read"                    # the watched function (omit: no fentry checks)
    floor_functions = ["update_curr"]         # count the floor in these whole functions instead
    floor_keys = ["static_call:cond_resched"] # or at the sites the census gives these user:key
    record_batches = true                     # false: no stop per text_poke batch (see Scenario)
    floor_anywhere = false                    # true: the floor counts every judged trap
    watch_body = false                        # true: also watch the function's first body instruction
    unsupported_if = {"sysctl:x.y" = "why"}   # UNSUPPORTED with the reason when the guest meets it
    budget = {first = 2, rate = 10.0, burst = 32, batches_per_burst = 8}  # budget.TrapBudget;
                                              # "none" for no limit, omitted: its default
    min_traps = 1                             # the floor (default 1)
    repeat = 2                                # cycles of [[steps]] (default 2)
    load = "read"                             # loadgen path on vCPUs 1..: getpid, read, yield, or
    # load = {path = "read", max_cpus = 1, pace = [1, 0]}   # at most 1 vCPU, sleep 0 us every 1
    requires = ["CONFIG_KPROBE_EVENTS", "symbol:{function}", "tracefs:kprobe_events"]

    [[setup]]                                 # then [[steps]] (repeated), then [[teardown]]
    name = "add"
    run = "echo 'p:my/read {function}' >> {tracing}/kprobe_events"
    site = "nop"                              # the fentry site afterwards: call or nop
    evidence = "..."                          # prints a count that must be > 0 over the run
    target = "sym"                            # with site = "call": the symbol it must call
    static_calls = {cond_resched = "ret0"}    # __SCT__<name> and its inline sites afterwards
    body = "..."                              # with watch_body: the body site's state (BODY_STATES)

    [final]
    site = "nop"                              # call, nop, or unchecked (default: nop with a function)
    checks = [{run = "cat {tracing}/kprobe_events; echo end", expect = "^end\\s*$"}]

Every error is one line (:class:`ScenarioFileError`, a ``ValueError``) naming the
file and the key: TOML syntax, unknown keys, wrong types, missing fields, and
whatever :func:`scenario.validate` finds in the result.  Pure but for
:func:`load_file`'s read.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.budget import DEFAULT as DEFAULT_BUDGET
from ..core.budget import TrapBudget
from ..core.errors import UsageError
from .scenario import BODY_STATES, SITE_STATES, FinalState, Load, Scenario, Step, validate

LOADS = ("getpid", "read", "yield")
LOAD_KEYS = ("path", "max_cpus", "pace")
BUDGET_KEYS = ("first", "rate", "burst", "batches_per_burst")
#: [final] site: "unchecked" is a declaration's ``FinalState(site=None)``
FINAL_SITES = (*SITE_STATES, "unchecked")
#: the longest file read (a scenario is a few dozen lines)
MAX_BYTES = 256 * 1024


class ScenarioFileError(ValueError):
    """A scenario file that cannot be loaded; ``str()`` is one line naming file and key."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _show(value: Any) -> str:
    return _one_line(repr(value), 60)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


class _Fields:
    """One TOML table's keys, taken one by one; what is left over is an unknown key."""

    def __init__(self, table: Any, where: str) -> None:
        if not isinstance(table, dict):
            raise ScenarioFileError(f"{where}: must be a table, not {_type_name(table)}")
        self.table = dict(table)
        self.where = where

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def take(self, key: str, kind: type, default: Any = None, required: bool = False) -> Any:
        if key not in self.table:
            if required:
                raise ScenarioFileError(f"{self._key(key)}: missing (required)")
            return default
        value = self.table.pop(key)
        if type(value) is not kind:  # bool is an int in Python, not in TOML
            raise ScenarioFileError(f"{self._key(key)}: must be {_type_name(kind())}, "
                                    f"not {_type_name(value)} ({_show(value)})")
        return value

    def text(self, key: str, required: bool = False, choices: tuple[str, ...] = ()) -> str | None:
        value = self.take(key, str, required=required)
        if value is not None and choices and value not in choices:
            raise ScenarioFileError(f"{self._key(key)}: {_show(value)} is not one of {', '.join(choices)}")
        if value is not None and not value.strip():
            raise ScenarioFileError(f"{self._key(key)}: empty")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        items = self.take(key, list, default=[])
        for i, v in enumerate(items):
            if type(v) is not str:
                raise ScenarioFileError(f"{self._key(key)}[{i}]: must be a string, not {_type_name(v)}")
        return tuple(items)

    def pairs(self, key: str) -> tuple[tuple[str, str], ...]:
        table = self.take(key, dict, default={})
        for k, v in table.items():
            if type(v) is not str:
                raise ScenarioFileError(f"{self._key(key)}.{_show(k)}: must be a string, not {_type_name(v)}")
        return tuple(table.items())

    def positive(self, key: str, default: int) -> int:
        value = self.take(key, int, default=default)
        if value < 1:
            raise ScenarioFileError(f"{self._key(key)}: must be >= 1, not {value}")
        return int(value)

    def tables(self, key: str) -> list[tuple[Any, str]]:
        items = self.take(key, list, default=[])
        return [(v, f"{self._key(key)}[{i}]") for i, v in enumerate(items)]

    def done(self, allowed: tuple[str, ...]) -> None:
        if self.table:
            key = next(iter(self.table))
            raise ScenarioFileError(f"{self._key(key) if self.where else _show(key)}: unknown key "
                                    f"(allowed here: {', '.join(allowed)})")


STEP_KEYS = ("name", "run", "site", "evidence", "target", "static_calls", "body")
CHECK_KEYS = ("run", "expect")
FINAL_KEYS = ("site", "checks", "body")
TOP_KEYS = ("name", "description", "function", "floor_functions", "floor_keys", "record_batches",
            "floor_anywhere", "budget", "watch_body", "unsupported_if", "min_traps", "repeat", "load",
            "requires", "setup", "steps", "teardown", "final")


def _step(table: Any, where: str) -> Step:
    f = _Fields(table, where)
    st = Step(name=str(f.text("name", required=True)), action=str(f.text("run", required=True)),
              site=f.text("site", choices=SITE_STATES), evidence=f.text("evidence"), target=f.text("target"),
              static_calls=f.pairs("static_calls"), body=f.text("body", choices=BODY_STATES))
    f.done(STEP_KEYS)
    return st


def _load(value: Any) -> Load:
    """``load = "read"`` or ``load = {path = "read", max_cpus = 1, pace = [N, US]}``."""
    if value is None or isinstance(value, str):
        return Load(str(_Fields({"load": value} if value is not None else {}, "").text("load", choices=LOADS)
                        or "getpid"))
    if not isinstance(value, dict):
        raise ScenarioFileError(f"load: must be a string or a table, "
                                f"not {_type_name(value)} ({_show(value)})")
    f = _Fields(value, "load")
    path = str(f.text("path", choices=LOADS) or "getpid")
    max_cpus = f.positive("max_cpus", 0) if "max_cpus" in f.table else None
    pace = f.take("pace", list)
    if pace is not None:
        if len(pace) != 2 or any(type(v) is not int for v in pace) or pace[0] < 1 or pace[1] < 0:
            raise ScenarioFileError(f"load.pace: must be [N, US] (N >= 1 iterations, US >= 0 "
                                    f"microseconds), not {_show(pace)}")
    f.done(LOAD_KEYS)
    return Load(path, max_cpus=max_cpus, pace=(pace[0], pace[1]) if pace is not None else None)


def _budget(value: Any) -> TrapBudget:
    """``budget = {first = N, rate = R, burst = B, batches_per_burst = K}``: each a positive number
    or "none" (no limit of that kind); a key left out keeps :data:`budget.DEFAULT`'s value."""
    if value is None:
        return DEFAULT_BUDGET
    f = _Fields(value, "budget")
    got: dict[str, Any] = {}
    for key in BUDGET_KEYS:
        if key not in f.table:
            continue
        v = f.table.pop(key)
        if v == "none":
            got[key] = None
        elif type(v) is int or (key == "rate" and type(v) is float):
            if not math.isfinite(v):  # TOML has nan and inf
                raise ScenarioFileError(f"budget.{key}: must be a finite number or \"none\", not {_show(v)}")
            if v <= 0:
                raise ScenarioFileError(f"budget.{key}: must be > 0 or \"none\", not {_show(v)}")
            got[key] = v
        else:
            raise ScenarioFileError(f"budget.{key}: must be {'a number' if key == 'rate' else 'an integer'} "
                                    f"or \"none\", not {_type_name(v)} ({_show(v)})")
    f.done(BUDGET_KEYS)
    try:
        return replace(DEFAULT_BUDGET, **got)
    except ValueError as exc:
        raise ScenarioFileError(f"budget: {_one_line(str(exc))}") from None


def _final(table: Any, has_function: bool) -> FinalState:
    f = _Fields(table, "final")
    site = f.text("site", choices=FINAL_SITES) or ("nop" if has_function else "unchecked")
    body = f.text("body", choices=BODY_STATES)
    checks = []
    for item, where in f.tables("checks"):
        c = _Fields(item, where)
        cmd, rx = c.text("run", required=True), c.text("expect", required=True)
        c.done(CHECK_KEYS)
        checks.append((str(cmd), str(rx)))
    f.done(FINAL_KEYS)
    return FinalState(site=None if site == "unchecked" else site, checks=tuple(checks), body=body)


def parse(text: str) -> Scenario:
    """A Scenario from a scenario file's text; ScenarioFileError (one line, no file name) if bad."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioFileError(f"not valid TOML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise ScenarioFileError("not valid TOML: nested too deeply") from None
    f = _Fields(data, "")
    name = str(f.text("name", required=True))
    description = str(f.text("description", required=True))
    function = f.text("function")
    floor_functions = f.strings("floor_functions")
    sc = Scenario(
        name=name, description=description, function=function, floor_functions=floor_functions,
        floor_keys=f.strings("floor_keys"), record_batches=f.take("record_batches", bool, default=True),
        floor_anywhere=f.take("floor_anywhere", bool, default=False),
        budget=_budget(f.take("budget", dict)), watch_body=f.take("watch_body", bool, default=False),
        unsupported_if=f.pairs("unsupported_if"),
        min_traps=f.positive("min_traps", 1), repeat=f.positive("repeat", 2),
        load=_load(f.table.pop("load", None)),
        requires=f.strings("requires"),
        setup=tuple(_step(t, w) for t, w in f.tables("setup")),
        steps=tuple(_step(t, w) for t, w in f.tables("steps")),
        teardown=tuple(_step(t, w) for t, w in f.tables("teardown")),
        final_state=_final(f.take("final", dict, default={}), function is not None))
    f.done(TOP_KEYS)
    if not sc.steps:
        raise ScenarioFileError("steps: missing (at least one [[steps]] table is required)")
    problems = validate(sc)
    if problems:
        raise ScenarioFileError(_one_line("; ".join(problems)))
    return sc


def load_file(path: Path) -> Scenario:
    """The scenario in ``path``; UsageError (one line: the file, the key, what is wrong) if bad."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"scenario file {path}: {(exc.strerror or 'cannot be read').lower()}") from None
    if len(raw) > MAX_BYTES:
        raise UsageError(f"scenario file {path}: larger than {MAX_BYTES // 1024} KiB")
    try:
        return parse(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"scenario file {path}: not UTF-8 text") from None
    except ScenarioFileError as exc:
        raise UsageError(f"scenario file {path}: {exc}") from None


def is_file_arg(arg: str) -> bool:
    """Whether a scenario argument names a file (ends in ``.toml``) rather than a built-in name."""
    return arg.endswith(".toml")


def resolve(arg: str, builtin: Callable[[str], Scenario | None]) -> Scenario:
    """A built-in scenario by name, or a scenario file; UsageError naming what is wrong (also a
    file whose scenario takes a built-in's name: every verdict names the scenario it ran)."""
    if is_file_arg(arg):
        mine = load_file(Path(arg))
        if builtin(mine.name) is not None:
            raise UsageError(f"scenario file {arg}: the name '{mine.name}' is taken (a built-in scenario; "
                             "give yours another name)")
        return mine
    sc = builtin(arg)
    if sc is None:
        raise UsageError(f"unknown scenario '{arg}' (a name from `pokelab scenarios`, or a FILE.toml)")
    return sc


# --------------------------------------------------------------------------- writing


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string


def _step_toml(kind: str, st: Step) -> list[str]:
    if not isinstance(st.action, str):
        raise ValueError(f"step '{st.name}' runs Python code: not expressible in a file")
    out = [f"[[{kind}]]", f"name = {_q(st.name)}", f"run = {_q(st.action)}"]
    out += [f"{k} = {_q(v)}" for k, v in (("site", st.site), ("evidence", st.evidence),
                                           ("target", st.target)) if v is not None]
    if st.body is not None:
        out.append(f"body = {_q(st.body)}")
    if st.static_calls:
        out.append("static_calls = {" + ", ".join(f"{_q(k)} = {_q(v)}" for k, v in st.static_calls) + "}")
    return [*out, ""]


def to_toml(sc: Scenario) -> str:
    """A scenario file for a declaration (``parse(to_toml(sc)) == sc``); ValueError if it cannot be."""
    if sc.unsupported:
        raise ValueError(f"{sc.name} is marked unsupported: not expressible in a file")
    out = [f"name = {_q(sc.name)}", f"description = {_q(sc.description)}"]
    if sc.function is not None:
        out.append(f"function = {_q(sc.function)}")
    if sc.floor_functions:
        out.append(f"floor_functions = [{', '.join(map(_q, sc.floor_functions))}]")
    if sc.floor_keys:
        out.append(f"floor_keys = [{', '.join(map(_q, sc.floor_keys))}]")
    if not sc.record_batches:
        out.append("record_batches = false")
    if sc.floor_anywhere:
        out.append("floor_anywhere = true")
    if sc.watch_body:
        out.append("watch_body = true")
    if sc.unsupported_if:
        out.append("unsupported_if = {" + ", ".join(f"{_q(k)} = {_q(v)}" for k, v in sc.unsupported_if) + "}")
    if sc.budget != DEFAULT_BUDGET:
        values = {k: getattr(sc.budget, k) for k in BUDGET_KEYS}
        out.append("budget = {" + ", ".join(f"{k} = {_q('none') if v is None else v}"
                                            for k, v in values.items()) + "}")
    load = _q(sc.load.path)
    if sc.load.max_cpus is not None or sc.load.pace is not None:
        load = "{" + ", ".join([f"path = {load}"] + ([f"max_cpus = {sc.load.max_cpus}"]
                                                     if sc.load.max_cpus is not None else [])
                               + ([f"pace = [{sc.load.pace[0]}, {sc.load.pace[1]}]"]
                                  if sc.load.pace is not None else [])) + "}"
    out += [f"min_traps = {sc.min_traps}", f"repeat = {sc.repeat}", f"load = {load}",
            f"requires = [{', '.join(map(_q, sc.requires))}]", ""]
    for kind, steps in (("setup", sc.setup), ("steps", sc.steps), ("teardown", sc.teardown)):
        for st in steps:
            out += _step_toml(kind, st)
    checks = ", ".join(f"{{run = {_q(c)}, expect = {_q(rx)}}}" for c, rx in sc.final_state.checks)
    out += ["[final]", f"site = {_q(sc.final_state.site or 'unchecked')}", f"checks = [{checks}]"]
    if sc.final_state.body is not None:
        out.append(f"body = {_q(sc.final_state.body)}")
    out.append("")
    return "\n".join(out)


def nightly_table(args: Sequence[str], builtin: Mapping[str, Scenario]) -> dict[str, Scenario]:
    """``pokelab nightly --scenarios A,B``: {name: scenario} in the order given, built-in names and
    FILE.toml alike (a file's scenario under its ``name``).  UsageError for an unknown name, a bad
    file, or two scenarios of one name (a matrix cell is named by it)."""
    out: dict[str, Scenario] = {}
    for arg in args:
        sc = resolve(arg, builtin.get)
        if sc.name in out:  # a file's name that a built-in has is refused by resolve
            raise UsageError(f"scenario file {arg}: the name '{sc.name}' is taken (given twice)")
        out[sc.name] = sc
    return out
