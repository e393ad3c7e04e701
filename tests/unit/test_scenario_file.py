"""Scenario files (orchestrator/run/scenario_file.py): the examples load, the built-in declarations
round-trip, every bad file is one line naming the key (exit 2 from the CLI), and random
mutations of valid files never raise anything but that one-line error."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.core.errors import UsageError
from orchestrator.run import scenario_file
from orchestrator.run.scenario import Scenario
from orchestrator.run.scenario_file import ScenarioFileError, load_file, nightly_table, parse, to_toml
from orchestrator.run.scenarios_table import BY_NAME, SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "scenarios" / "examples").glob("*.toml"))

MINIMAL = '''name = "mine"
description = "one line"
function = "__do_sys_getpid"

[[steps]]
name = "on"
run = "echo function > {tracing}/current_tracer"
site = "call"
'''


def test_there_are_example_files_and_they_load() -> None:
    assert len(EXAMPLES) >= 2
    for path in EXAMPLES:
        sc = load_file(path)
        assert sc.name == path.stem and sc.steps
        # a user's own scenario, not a copy of a built-in one
        assert sc.name not in BY_NAME


def test_the_examples_use_what_a_declaration_holds() -> None:
    by = {p.stem: load_file(p) for p in EXAMPLES}
    read, sched = by["kprobe-read"], by["tracepoint-stat-runtime"]
    assert read.load.path == "read" and read.function == "ksys_read"
    assert [s.site for s in read.steps] == ["nop", "call", "nop", None]
    assert read.final_state.site == "nop" and read.final_state.checks
    assert sched.function is None and sched.floor_functions[0] == "update_curr"
    assert sched.final_state.site is None and sched.setup and sched.teardown
    assert any(s.evidence for s in read.steps) and any(s.evidence for s in sched.steps)


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_builtin_scenario_is_expressible_as_a_file(sc: Scenario) -> None:
    assert parse(to_toml(sc)) == sc


def test_the_newer_fields_load() -> None:
    sc = parse('load = {path = "read", max_cpus = 1, pace = [1, 0]}\nfloor_keys = ["static_call:x"]\n'
               + MINIMAL + 'static_calls = {cond_resched = "ret0", might_resched = "func:__cond_resched"}\n')
    assert (sc.load.path, sc.load.max_cpus, sc.load.pace) == ("read", 1, (1, 0))
    assert sc.floor_keys == ("static_call:x",) and sc.record_batches
    b = parse('budget = {first = 2, rate = "none"}\nfloor_anywhere = true\n' + MINIMAL)
    assert (b.budget.first, b.budget.rate, b.budget.burst) == (2, None, 256) and b.floor_anywhere
    assert sc.steps[0].static_calls == (("cond_resched", "ret0"), ("might_resched", "func:__cond_resched"))


def test_defaults() -> None:
    sc = parse(MINIMAL)
    assert (sc.repeat, sc.min_traps, sc.load.path, sc.requires) == (2, 1, "getpid", ())
    assert sc.final_state.site == "nop"  # with a function: the site is NOP again at the end
    assert parse(MINIMAL.replace('function = "__do_sys_getpid"\n', 'floor_functions = ["f"]\n')
                 .replace('site = "call"\n', "")).final_state.site is None


@pytest.mark.parametrize("text, message", [
    ("bogus = 1\n" + MINIMAL, "'bogus': unknown key (allowed here: name, description"),
    (MINIMAL + "bogus = 1\n", "steps[0].bogus: unknown key"),
    (MINIMAL.replace('site = "call"', 'site = "call"\nwhen = 1'), "steps[0].when: unknown key"),
    (MINIMAL + "[final]\nsite = \"nop\"\nextra = 1\n", "final.extra: unknown key"),
    (MINIMAL + '[final]\nchecks = [{run = "x", expect = "y", z = 1}]\n', "final.checks[0].z: unknown key"),
    (MINIMAL + '[final]\nchecks = [{run = "x"}]\n', "final.checks[0].expect: missing"),
    (MINIMAL.replace('name = "mine"\n', ""), "name: missing (required)"),
    (MINIMAL.replace('run = "echo', 'nope = "echo'), "steps[0].run: missing"),
    (MINIMAL.replace("[[steps]]", "[[setup]]"), "steps: missing"),
    (MINIMAL + "repeat = 0\n", "steps[0].repeat: unknown key"),  # after [[steps]]: the step's
    ('repeat = 0\n' + MINIMAL, "repeat: must be >= 1"),
    ('repeat = true\n' + MINIMAL, "repeat: must be an integer, not a boolean"),
    ('min_traps = 1.5\n' + MINIMAL, "min_traps: must be an integer, not a number"),
    ('load = "spin"\n' + MINIMAL, "load: 'spin' is not one of getpid, read, yield"),
    ('load = 3\n' + MINIMAL, "load: must be a string or a table, not an integer"),
    ('load = {path = "read", pace = [0, 5]}\n' + MINIMAL, "load.pace: must be [N, US]"),
    ('load = {path = "read", max_cpus = 0}\n' + MINIMAL, "load.max_cpus: must be >= 1"),
    ('load = {path = "read", cpus = 1}\n' + MINIMAL, "load.cpus: unknown key"),
    ('record_batches = 1\n' + MINIMAL, "record_batches: must be a boolean, not an integer"),
    ('record_batches = false\n' + MINIMAL, "without batch recording the steps must read back"),
    ('floor_keys = ["nobody:x"]\n' + MINIMAL, "floor key 'nobody:x'"),
    (MINIMAL + 'static_calls = {cond_resched = 1}\n', "static_calls.'cond_resched': must be a string"),
    (MINIMAL + 'static_calls = {cond_resched = "off"}\n', "static call 'cond_resched': form must be"),
    ('budget = {first = 0}\n' + MINIMAL, "budget.first: must be > 0"),
    ('budget = {rate = "fast"}\n' + MINIMAL, "budget.rate: must be a number or \"none\", not a string"),
    ('budget = {first = 1, every = 2}\n' + MINIMAL, "budget.every: unknown key"),
    ('floor_anywhere = "yes"\n' + MINIMAL, "floor_anywhere: must be a boolean"),
    ('requires = "CONFIG_X"\n' + MINIMAL, "requires: must be an array, not a string"),
    ('requires = [1]\n' + MINIMAL, "requires[0]: must be a string, not an integer"),
    ('requires = ["what:ever"]\n' + MINIMAL, "bad requirement 'what:ever'"),
    ('final = 3\n' + MINIMAL, "final: must be a table, not an integer"),
    ('steps = 3\n' + MINIMAL.split("[[steps]]")[0], "steps: must be an array, not an integer"),
    ('steps = [1]\n' + MINIMAL.split("[[steps]]")[0], "steps[0]: must be a table, not an integer"),
    (MINIMAL.replace('site = "call"', 'site = "jmp"'), "steps[0].site: 'jmp' is not one of call, nop"),
    (MINIMAL.replace('name = "mine"', 'name = "Mine Two"'), "name 'Mine Two': use lower-case"),
    (MINIMAL.replace('name = "on"', 'name = ""'), "steps[0].name: empty"),
    (MINIMAL.replace('function = "__do_sys_getpid"\n', ""), "neither a function nor floor_functions"),
    (MINIMAL + 'target = "x y"\n', "a call target needs site='call' and a plain symbol name"),
    (MINIMAL + "[final]\nchecks = [{run = \"x\", expect = \"(\"}]\n", "bad final-state regex"),
    ('name = "x\n', "not valid TOML"),
    (MINIMAL + MINIMAL, "not valid TOML"),  # name given twice
])
def test_bad_files_are_one_line_naming_the_key(text: str, message: str | None) -> None:
    with pytest.raises(ScenarioFileError) as err:
        parse(text)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) <= 300
    if message is not None:
        assert message in msg, msg


def test_load_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"name = \"\xff\"\n")
    with pytest.raises(UsageError, match=r"scenario file .*bad.toml: not UTF-8 text"):
        load_file(bad)
    with pytest.raises(UsageError, match="no such file or directory"):
        load_file(tmp_path / "missing.toml")
    with pytest.raises(UsageError, match="is a directory"):
        load_file(tmp_path)
    big = tmp_path / "big.toml"
    big.write_text("#" * (scenario_file.MAX_BYTES + 1))
    with pytest.raises(UsageError, match="larger than"):
        load_file(big)


def test_nightly_table_takes_names_and_files() -> None:
    table = nightly_table(["ftrace-function", *map(str, EXAMPLES)], BY_NAME)
    assert list(table) == ["ftrace-function", *(p.stem for p in EXAMPLES)]
    with pytest.raises(UsageError, match="given twice"):
        nightly_table([str(EXAMPLES[0]), str(EXAMPLES[0])], BY_NAME)
    with pytest.raises(UsageError, match="unknown scenario 'nope'"):
        nightly_table(["nope"], BY_NAME)


def test_a_file_named_like_a_builtin_is_refused_by_nightly(tmp_path: Path) -> None:
    f = tmp_path / "x.toml"
    f.write_text(to_toml(BY_NAME["ftrace-function"]))
    with pytest.raises(UsageError, match="a built-in scenario"):
        nightly_table([str(f)], BY_NAME)


@pytest.mark.parametrize("command", [["repro"], ["bisect", "--debian", "6.1-oldest..6.1", "--dry-run",
                                                  "--scenario"]])
def test_a_file_named_like_a_builtin_is_refused_by_repro_and_bisect(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    """A file's scenario under a built-in's name would run as, and be reported as, that built-in's
    name: repro and bisect refuse it as nightly does (the verdict names the scenario it ran)."""
    f = tmp_path / "x.toml"
    f.write_text(to_toml(BY_NAME["ftrace-function"]))
    assert cli.main([*command, str(f)]) == 2
    err = capsys.readouterr().err
    assert err == (f"pokelab: usage: scenario file {f}: the name 'ftrace-function' is taken (a built-in "
                   "scenario; give yours another name)\n"), err


@pytest.mark.parametrize("extra", [[], ["--bisect-exit-codes"]])
def test_cli_bad_file_is_one_usage_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        extra: list[str]) -> None:
    f = tmp_path / "s.toml"
    f.write_text(MINIMAL.replace('site = "call"', "site = 5"))
    for argv in (["repro", str(f), *extra], ["nightly", "--scenarios", str(f), "--dry-run"]):
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("pokelab: usage: scenario file "), err
        assert "steps[0].site: must be a string, not an integer (5)" in err
        # a bad command line must not mark a revision bad under git bisect run
        assert rc == (128 if extra and argv[0] == "repro" else 2)


# --------------------------------------------------------------------------- fuzz


def _values(rng: random.Random) -> str:
    return rng.choice(['""', '"x"', "0", "-1", "1.5", "true", "[]", "[1, \"a\"]", "{}", "{a = 1}",
                       '"call"', '"nop"', '"unchecked"', '"yield"', "1979-05-27", '"\\u0000"',
                       '"CONFIG_X=y"', '"symbol:{function}"', '"("', '"a\\nb"', "nan", "inf"])


def _mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    if not lines:
        return text + _values(rng)
    kind = rng.randrange(9)
    i = rng.randrange(len(lines))
    if kind == 0:  # drop a line
        del lines[i]
    elif kind == 1:  # duplicate a line
        lines.insert(i, lines[i])
    elif kind == 2 and "=" in lines[i]:  # another value, of any type
        key = lines[i].split("=", 1)[0]
        lines[i] = f"{key}= {_values(rng)}"
    elif kind == 3:  # an unknown key, anywhere
        lines.insert(i, f"{rng.choice(['bogus', 'Name', 'step', 'sites', 'min-traps'])} = {_values(rng)}")
    elif kind == 4:  # cut the file short
        return text[:rng.randrange(len(text))]
    elif kind == 5:  # garbage bytes
        pos = rng.randrange(len(text))
        junk = "".join(rng.choice("[]{}=\"'\\#\n,.\x00\x7fé ") for _ in range(rng.randint(1, 4)))
        return text[:pos] + junk + text[pos + 1:]
    elif kind == 6:  # swap two lines
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == 7:  # a table header renamed or made an array of tables
        lines.insert(i, rng.choice(["[final]", "[[steps]]", "[[final]]", "[steps]", "[load]", "[[bogus]]"]))
    else:  # an empty or whitespace-only value for a key
        if "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + '= "   "'
    return "\n".join(lines) + "\n"


def test_fuzz_mutated_files_load_or_fail_in_one_line() -> None:
    rng = random.Random(12)
    seeds = [p.read_text() for p in EXAMPLES] + [to_toml(s) for s in SCENARIOS] + [MINIMAL]
    outcomes = {"loaded": 0, "refused": 0}
    for n in range(3000):
        text = rng.choice(seeds)
        for _ in range(rng.randint(1, 3)):
            text = _mutate(text, rng)
        try:
            sc = parse(text)
        except ScenarioFileError as exc:
            msg = str(exc)
            assert msg and "\n" not in msg and len(msg) <= 300, (n, text, msg)
            assert "Traceback" not in msg
            outcomes["refused"] += 1
        else:
            assert isinstance(sc, Scenario) and sc.steps
            outcomes["loaded"] += 1
    # the mutations reach both sides: the test would notice a loader that refuses everything
    assert outcomes["loaded"] > 100 and outcomes["refused"] > 1000, outcomes


def test_fuzz_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(7)
    base = EXAMPLES[0].read_text()
    f = tmp_path / "f.toml"
    for _ in range(150):
        text = _mutate(_mutate(base, rng), rng)
        try:
            tomllib.loads(text)
            parse(text)
            continue  # still a valid scenario: it would boot a VM
        except (tomllib.TOMLDecodeError, ScenarioFileError):
            pass
        f.write_text(text, errors="surrogateescape")
        assert cli.main(["repro", str(f)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("pokelab: usage: scenario file "), err


def test_nightly_plans_cells_for_scenario_files(capsys: pytest.CaptureFixture[str]) -> None:
    files = ",".join(map(str, EXAMPLES))
    argv = ["nightly", "--kernels", "6.1", "--scenarios", f"ftrace-function,{files}", "--dry-run"]
    assert cli.main(argv) == 0
    want = ["6.1 ftrace-function", *(f"6.1 {p.stem}" for p in EXAMPLES)]
    assert capsys.readouterr().out.splitlines() == want
