"""Bad input a new user tried (session 5): each is one ``pokelab: usage:`` line and exit 2, found
before anything is fetched, built, booted or written; ``--dry-run`` refuses what a run would.

Every CLI run here has an empty ``HOME`` and ``POKELAB_CACHE`` under ``tmp_path``: nothing of the
host's cache, no network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clirun import assert_one_line_error, pokelab
from githistory import git, make_history

from orchestrator.core.budget import TrapBudget
from orchestrator.core.errors import UsageError
from orchestrator.host import meminfo
from orchestrator.kernels.catalog import Catalog
from orchestrator.run import request as request_mod
from orchestrator.run.request import RunRequest, VmOptions
from orchestrator.run.scenario_file import ScenarioFileError, parse
from orchestrator.run.scenarios_table import BY_NAME

SCENARIO = '''name = "mine"
description = "one line"
function = "{function}"
{extra}
[[steps]]
name = "on"
run = "echo function > {{tracing}}/current_tracer"
[[steps]]
name = "{second}"
run = "echo nop > {{tracing}}/current_tracer"
'''


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An empty home and cache (nothing made in them is allowed: see :func:`made`)."""
    return {**os.environ, "HOME": str(tmp_path / "home"), "POKELAB_CACHE": str(tmp_path / "cache"),
            "POKELAB_ARTIFACTS": str(tmp_path / "art")}


def made(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


# --------------------------------------------------------------------------- 1. --memory


def test_memory_over_the_hosts_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    res = pokelab("probe", "--memory", "99999999999", "--dry-run", env=env)
    assert_one_line_error(res, "usage", "--memory 99999999999: more than this host's RAM")
    assert made(tmp_path) == []


def test_the_memory_bound_is_the_hosts_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request_mod, "host_memory_mib", lambda: 2048)
    VmOptions(memory_mb=2048).check()
    with pytest.raises(UsageError, match=r"--memory 2049: more than this host's RAM \(2048 MiB\)"):
        VmOptions(memory_mb=2049).check()


def test_host_memory_is_memtotal_or_a_fixed_maximum(tmp_path: Path) -> None:
    info = tmp_path / "meminfo"
    info.write_text("MemFree:  100 kB\nMemTotal:       8052736 kB\n")
    assert meminfo.host_memory_mib(info) == 7864
    info.write_text("MemTotal: lots\n")
    assert meminfo.host_memory_mib(info) == meminfo.FALLBACK_MAX_MIB
    assert meminfo.host_memory_mib(tmp_path / "none") == meminfo.FALLBACK_MAX_MIB


# --------------------------------------------------------------------------- 2. --inject-every


def test_inject_every_without_inject_is_refused(env: dict[str, str]) -> None:
    res = pokelab("probe", "--inject-every", "3", "--dry-run", env=env)
    assert_one_line_error(res, "usage", "--inject-every goes with --inject")


def test_inject_every_with_inject_is_taken(tmp_path: Path) -> None:
    sc = BY_NAME["ftrace-function"]
    RunRequest(sc, tmp_path, inject="skip-call", inject_every=3).check()
    RunRequest(sc, tmp_path, inject="skip-call").check()  # the default: every 2nd
    with pytest.raises(UsageError, match="goes with --inject"):
        RunRequest(sc, tmp_path, inject_every=2).check()


# --------------------------------------------------------------------------- 3. kernels no archive has


@pytest.mark.parametrize("kernel", ["5.10", "5.10.0-30", "4.19-rt-amd64", "linux-image-5.10.0-30-amd64"])
def test_a_kernel_older_than_the_sources_fails_the_dry_run_too(kernel: str, env: dict[str, str],
                                                              tmp_path: Path) -> None:
    res = pokelab("probe", "--kernel", kernel, "--dry-run", env=env)
    assert_one_line_error(res, "usage", "no Debian", "they start at 6.1")
    assert made(tmp_path) == []


def test_catalog_lookup_refuses_old_lines_only() -> None:
    cat = Catalog.load()
    for name in ("5.10", "6.0", "5.10.0-30"):
        with pytest.raises(UsageError, match=r"start at 6\.1"):
            cat.lookup(name)
    for name in ("6.1", "6.12", "6.1.0-57", "7.9", "9.0-rt-amd64"):  # the archive answers these
        assert cat.lookup(name).id == name


# --------------------------------------------------------------------------- 4. nightly --dry-run --format


def test_nightly_dry_run_refuses_ktap(env: dict[str, str], tmp_path: Path) -> None:
    res = pokelab("nightly", "--dry-run", "--format", "ktap", "--out", str(tmp_path / "n"), env=env)
    assert_one_line_error(res, "usage", "--dry-run prints the cells as text, not ktap")
    assert made(tmp_path) == []


def test_nightly_dry_run_asks_no_archive(env: dict[str, str], tmp_path: Path) -> None:
    """With nothing cached or resolved, the default kernels are all listed, named as unresolved on
    stderr, and no apt is run: not even the cache dir is made."""
    res = pokelab("nightly", "--dry-run", "--scenarios", "ftrace-function", "--out", str(tmp_path / "n"),
                  env=env)
    assert res.returncode == 0, res.stderr
    ids = Catalog.load().ids
    assert res.stdout.splitlines() == [f"{k} ftrace-function" for k in ids]
    assert "never resolved here; a real run asks the archive" in res.stderr
    assert made(tmp_path) == []


# --------------------------------------------------------------------------- 5. scenario files


@pytest.mark.parametrize(("function", "extra", "second", "needle"), [
    ("ksys_read; reboot", "", "off", "function 'ksys_read; reboot' is not a function name"),
    ("ksys read", "", "off", "function 'ksys read' is not a function name"),
    ("$(reboot)", "", "off", "is not a function name"),
    ("ksys_read", 'floor_functions = ["a|b"]', "off", "floor_functions[0] 'a|b' is not a function name"),
    ("ksys_read", "budget = {rate = nan}", "off", "budget.rate: must be a finite number"),
    ("ksys_read", "budget = {rate = inf}", "off", "budget.rate: must be a finite number"),
    ("ksys_read", "", "on", "steps[1].name 'on' is taken by steps[0]"),
])
def test_scenario_file_fields_refused(function: str, extra: str, second: str, needle: str) -> None:
    with pytest.raises(ScenarioFileError) as err:
        parse(SCENARIO.format(function=function, extra=extra, second=second))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_scenario_file_errors_name_the_file(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SCENARIO.format(function="x y", extra="", second="off"))
    res = pokelab("repro", str(bad), "--dry-run", env=env)
    assert_one_line_error(res, "usage", f"scenario file {bad}", "function 'x y'")
    assert made(tmp_path) == ["bad.toml"]


def test_a_good_function_name_and_phases_may_share_step_names() -> None:
    text = SCENARIO.format(function="foo.isra.0", extra="", second="off")
    sc = parse(text + '[[setup]]\nname = "on"\nrun = "true"\n[[teardown]]\nname = "on"\nrun = "true"\n')
    assert sc.function == "foo.isra.0"


def test_probe_function_option_is_a_function_name(env: dict[str, str]) -> None:
    assert_one_line_error(pokelab("probe", "--function", "a b", "--dry-run", env=env), "usage",
                          "--function 'a b': not a function name")


def test_trap_budget_rate_is_finite() -> None:
    for rate in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="rate must be > 0"):
            TrapBudget(rate=rate)


# --------------------------------------------------------------------------- 6. --qemu


def test_qemu_directory_is_named_a_directory(env: dict[str, str], tmp_path: Path) -> None:
    res = pokelab("probe", "--qemu", str(tmp_path), "--dry-run", env=env)
    assert_one_line_error(res, "usage", f"--qemu {tmp_path}: is a directory, not an executable file")


def test_bench_qemu_compare_checks(env: dict[str, str], tmp_path: Path) -> None:
    out = str(tmp_path / "b.json")
    res = pokelab("bench", "--qemu-compare", str(tmp_path), "--out", out, env=env)
    assert_one_line_error(res, "usage", f"--qemu-compare {tmp_path}: is a directory")
    res = pokelab("bench", "--part", "kbuild", "--qemu-compare", sys.executable, "--out", out, env=env)
    assert_one_line_error(res, "usage", "--qemu-compare goes with part vm")
    assert made(tmp_path) == []


# --------------------------------------------------------------------------- 7. bisect --source


def test_bisect_source_not_git_is_the_only_line(env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "notgit"
    src.mkdir()
    res = pokelab("bisect", "--source", str(src), "--good", "a", "--bad", "b", "--scenario",
                  "ftrace-function", env=env)
    assert_one_line_error(res, "usage", f"--source {src} is not a git checkout")
    assert made(tmp_path) == ["notgit"]


def test_bisect_bad_revision_is_the_only_line(env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(src)], check=True, timeout=30)
    res = pokelab("bisect", "--source", str(src), "--good", "nosuch", "--bad", "b", "--scenario",
                  "ftrace-function", env=env)
    assert_one_line_error(res, "usage", "'nosuch' is not a commit")
    assert made(tmp_path) == ["repo"]


def test_bisect_dry_run_plans_and_writes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    """``bisect --dry-run`` on a real (tiny) git history: the range, git's step estimate, what each
    step does; no worktree, log, artifacts or cache made, the user's repo untouched."""
    src = tmp_path / "repo"
    shas = make_history(src, lambda i: f"rev {i}\n", n=20)
    res = pokelab("bisect", "--source", str(src), "--good", shas[0], "--bad", "main", "--scenario",
                  "ftrace-function", "--runs", "2", "-j", "3", "--dry-run", env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == (f"{src}: {shas[0]} (good, {shas[0][:12]}) .. main (bad, {shas[-1][:12]}): "
                        "19 commits, about 4 judged between the endpoints")  # 1 + git's "roughly 3"
    assert lines[1] == ("each: a build (make -j3, in a scratch worktree under the cache), then up to 2 runs "
                        "of ftrace-function (good: 2 clean and no failure; bad: 2 failing)")
    assert lines[2].startswith(f"bisect log: {tmp_path / 'art'}")
    assert lines[2].endswith("(a dry run writes nothing)")
    assert made(tmp_path) == ["repo"]
    assert len(git(src, "worktree", "list").splitlines()) == 1


@pytest.mark.parametrize(("args", "said"), [
    (("--good", "main", "--bad", "main"), "good main and bad main are the same commit"),
    (("--good", "main", "--bad", "main~3"), "good main is not an ancestor of bad main~3"),
])
def test_bisect_dry_run_refuses_what_a_run_refuses(env: dict[str, str], tmp_path: Path,
                                                   args: tuple[str, ...], said: str) -> None:
    src = tmp_path / "repo"
    make_history(src, lambda i: f"rev {i}\n", n=5)
    for dry in ((), ("--dry-run",)):
        res = pokelab("bisect", "--source", str(src), *args, "--scenario", "ftrace-function", *dry, env=env)
        assert_one_line_error(res, "usage", said)
    assert made(tmp_path) == ["repo"]


def test_bisect_dry_run_debian_needs_the_lists(env: dict[str, str], tmp_path: Path) -> None:
    """The Debian range comes from pokelab's apt lists as they are: never fetched, one line (no update)."""
    res = pokelab("bisect", "--debian", "6.1.0-47..6.1", "--scenario", "ftrace-function", "--dry-run",
                  env=env)
    assert_one_line_error(res, "usage", "pokelab's Debian lists were never fetched here")
    assert made(tmp_path) == []


# --------------------------------------------------------------------------- 8. kernels listing


def test_kernels_listing_says_what_it_does_not_know(env: dict[str, str], tmp_path: Path) -> None:
    res = pokelab("kernels", env=env)
    assert res.returncode == 0, res.stderr
    assert "6.1          the newest 6.1 cloud-amd64 kernel with -dbg, default, never resolved here (the " \
           "archive is asked when first used), not cached" in res.stdout.splitlines()
    assert made(tmp_path) == []


def test_kernels_listing_says_what_a_line_resolved_to_and_when(env: dict[str, str], tmp_path: Path) -> None:
    kernels = tmp_path / "cache" / "kernels"
    kernels.mkdir(parents=True)
    now = time.time()
    (kernels / "resolved.json").write_text(json.dumps({
        "7.2:cloud-amd64:newest": {"release": "7.2.13+deb14-cloud-amd64", "version": "7.2.13-1",
                                   "time": now - 2 * 3600},
        "6.1:cloud-amd64:newest": {"release": "6.1.0-57-cloud-amd64", "version": "6.1.192-3",
                                   "time": now - 3 * 86400}}))
    lines = {ln.split()[0]: ln for ln in pokelab("kernels", env=env).stdout.splitlines()}
    assert lines["7.2"].endswith("not cached: 7.2.13+deb14-cloud-amd64 (7.2.13-1), resolved 2.0 h ago")
    assert lines["6.1"].endswith("not cached: 6.1.0-57-cloud-amd64 (6.1.192-3), resolved 3 d ago; "
                                 "asked again when next used")


# --------------------------------------------------------------------------- more: a closed stdout


def test_a_closed_stdout_is_no_traceback(env: dict[str, str]) -> None:
    """``pokelab kernels | head -1``: the reader gone, pokelab stops quietly with SIGPIPE's status."""
    r, w = os.pipe()
    os.close(r)
    try:
        res = subprocess.run([sys.executable, "-m", "orchestrator.cli", "scenarios"], stdout=w,
                             stderr=subprocess.PIPE, text=True, env=env, timeout=60, check=False)
    finally:
        os.close(w)
    assert (res.returncode, res.stderr) == (141, "")


# --------------------------------------------------------------------------- the second trial's holes


@pytest.mark.parametrize(("argv", "said"), [
    (("boot", "--dry-run", "--kernel", ""), "--kernel '': name a kernel"),
    (("boot", "--dry-run", "--artifacts", ""), "not a path"),
    (("run-cmd", "--dry-run", "--", ""), "run-cmd needs a guest command"),
    (("run-cmd", "--dry-run", "--timeout", "inf", "--", "true"), "--timeout inf: a guest command's deadline"),
    (("probe", "--dry-run", "--toggles", "99999999999"), "--toggles 99999999999: from 1 to 100000"),
    (("nightly", "--dry-run", "-j", "999999"), "-j 999999: VMs at once, from 1 to 64"),
    (("nightly", "--dry-run", "--kernels", "6.1,,6.12"), "--kernels 6.1,,6.12: an empty item"),
    (("nightly", "--dry-run", "--kernels", ""), "--kernels: an empty list"),
    (("images", "--kernel", "all", "--kernel", "nosuch"), "--kernel all names every catalog kernel"),
    (("build-kernel", "-j", "0"), "-j 0: make's jobs must be at least 1"),
    (("repro", "ftrace-function", "--format", "ktap", "--dry-run"), "not ktap: it has no verdict"),
    (("repro", "/nonexistent/mine.toml"), "scenario file /nonexistent/mine.toml: no such file"),
])
def test_second_trial_bad_input_is_one_line(argv: tuple[str, ...], said: str, env: dict[str, str],
                                             tmp_path: Path) -> None:
    res = pokelab(*argv, env=env)
    assert_one_line_error(res, "usage", said)
    assert made(tmp_path) == []


# --------------------------------------------------------------------------- the third trial's holes


@pytest.mark.parametrize(("argv", "said"), [
    # one wording for both ends of --smp (it was "at least 1" below and "1..64" above)
    (("run-cmd", "--dry-run", "--smp", "0", "--", "true"), "--smp must be 1..64, not 0"),
    (("run-cmd", "--dry-run", "--smp", "65", "--", "true"), "--smp must be 1..64, not 65"),
    # it was accepted and silently dropped
    (("run-cmd", "--dry-run", "--accel", "kvm", "--tcg-thread", "multi", "--", "true"),
     "--tcg-thread multi is for TCG: --accel kvm runs no TCG threads"),
    # repro --repeat had a bound, nightly's had none
    (("nightly", "--dry-run", "--repeat", "100001"), "--repeat 100001: from 1 to 100000"),
    (("nightly", "--dry-run", "--repeat", "0"), "--repeat 0: from 1 to 100000"),
])
def test_third_trial_bad_input_is_one_line(argv: tuple[str, ...], said: str, env: dict[str, str],
                                            tmp_path: Path) -> None:
    res = pokelab(*argv, env=env)
    assert_one_line_error(res, "usage", said)
    assert made(tmp_path) == []


# --------------------------------------------------------------------------- $POKELAB_ARTIFACTS


@pytest.mark.parametrize("argv", [("boot",), ("run-cmd", "--", "true"), ("repro", "ftrace-function"),
                                  ("probe", "--toggles", "1"), ("boot", "--dry-run")])
def test_a_bad_artifacts_root_from_the_environment_is_one_line(env: dict[str, str], tmp_path: Path,
                                                              argv: tuple[str, ...]) -> None:
    (tmp_path / "file").write_text("x")
    res = pokelab(*argv, env={**env, "POKELAB_ARTIFACTS": str(tmp_path / "file" / "x")})
    assert_one_line_error(res, "usage", f"$POKELAB_ARTIFACTS is {tmp_path / 'file' / 'x'}: Not a directory")
    assert made(tmp_path) == ["file"]


def test_an_empty_artifacts_root_from_the_environment_is_refused(env: dict[str, str]) -> None:
    res = pokelab("boot", "--dry-run", env={**env, "POKELAB_ARTIFACTS": ""})
    assert_one_line_error(res, "usage", "$POKELAB_ARTIFACTS is set but empty")


# --------------------------------------------------------------------------- the fourth trial's holes


@pytest.mark.parametrize(("kernels", "said"), [
    ("9.9", "no Debian 9.9 cloud-amd64 kernel with -dbg in pokelab's apt sources"),
    ("6.1,6.1.0-999", "no Debian kernel 6.1.0-999-cloud-amd64 in pokelab's apt sources"),
    ("6.1.0-48", "linux-image-6.1.0-48-cloud-amd64 has no -dbg package"),
])
def test_nightly_dry_run_refuses_a_kernel_the_lists_lack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         kernels: str, said: str) -> None:
    """``nightly --dry-run --kernels`` answers from pokelab's apt lists as they are, as ``repro
    --dry-run --kernel`` does: it listed ``9.9 ftrace-function`` and exited 0."""
    from orchestrator.jobs import nightly_run
    from orchestrator.kernels import debian

    lists = [debian.DebianKernel("6.1.0-47", "cloud-amd64", "6.1.170-3", True),
             debian.DebianKernel("6.1.0-48", "cloud-amd64", "6.1.172-1", False),
             debian.DebianKernel("6.1.0-57", "cloud-amd64", "6.1.192-3", True)]
    monkeypatch.setattr(debian, "available", lambda cache, flavour, offline=False: lists)
    monkeypatch.setenv("POKELAB_CACHE", str(tmp_path / "cache"))
    req = nightly_run.NightlyRequest(nightly_run.Reports(tmp_path / "n"), kernels=kernels,
                                     scenarios="ftrace-function")
    with pytest.raises(UsageError, match=said):
        nightly_run.plan(req, offline=True)
    ok = nightly_run.plan(dataclasses.replace(req, kernels="6.1,6.1.0-47"), offline=True)
    assert ok.cells == (("6.1", "ftrace-function"), ("6.1.0-47", "ftrace-function"))
    assert made(tmp_path) == []


@pytest.mark.parametrize("argv", [("repro", "ftrace-function"), ("boot", "--dry-run"), ("kernels",),
                                  ("nightly", "--dry-run", "--scenarios", "ftrace-function")])
def test_a_bad_cache_from_the_environment_is_one_line(env: dict[str, str], tmp_path: Path,
                                                      argv: tuple[str, ...]) -> None:
    """As ``$POKELAB_ARTIFACTS``: ``repro`` had written an INFRA verdict.json ("cannot create cache
    dir ...: File exists") and dry runs had printed paths under a file."""
    (tmp_path / "file").write_text("x")
    res = pokelab(*argv, env={**env, "POKELAB_CACHE": str(tmp_path / "file")})
    assert_one_line_error(res, "usage", f"$POKELAB_CACHE is {tmp_path / 'file'}: exists and is not a dir")
    assert made(tmp_path) == ["file"]


@pytest.mark.parametrize(("argv", "said"), [
    (("kernels", "--remove", "custom-zzz"), "no kernel 'custom-zzz' was built here"),
    (("kernels", "--remove", "9.9"), "kernel '9.9' was never fetched here"),
    (("build-kernel", "--source", "{src}"), "is not a kernel source tree"),
])
def test_a_refused_cache_command_makes_no_cache_dir(argv: tuple[str, ...], said: str, env: dict[str, str],
                                                    tmp_path: Path) -> None:
    """``kernels --remove`` and ``build-kernel`` made an empty cache dir before refusing their input."""
    (tmp_path / "src").mkdir()
    res = pokelab(*(a.format(src=tmp_path / "src") for a in argv), env=env)
    assert_one_line_error(res, "usage", said)
    assert made(tmp_path) == ["src"]


@pytest.mark.parametrize(("argv", "said"), [
    # repro --runs had a bound, bisect's had none (up to 100000000 runs of each revision were planned)
    (("bisect", "--dry-run", "--debian", "6.1-oldest..6.1", "--scenario", "ops-one", "--runs", "10001"),
     "--runs 10001: from 1 to 10000"),
    (("bisect", "--dry-run", "--debian", "6.1-oldest..6.1", "--scenario", "ops-one", "--runs", "0"),
     "--runs 0: from 1 to 10000"),
    # --artifacts-url was taken as any string, and without --kcidb (its one user) silently ignored
    (("nightly", "--dry-run", "--scenarios", "ops-one", "--artifacts-url", "not a url",
      "--kcidb", "{tmp}/k.json"),
     "--artifacts-url 'not a url': not an absolute URL"),
    (("nightly", "--dry-run", "--scenarios", "ops-one", "--artifacts-url", "", "--kcidb", "{tmp}/k.json"),
     "--artifacts-url '': not an absolute URL"),
    (("nightly", "--dry-run", "--scenarios", "ops-one", "--artifacts-url", "https://ci.example/n"),
     "--artifacts-url goes with --kcidb FILE"),
    # an empty --qemu was Path(''), the current directory: "--qemu .: is a directory"
    (("boot", "--dry-run", "--qemu", ""), "argument --qemu: invalid executable value: ''"),
    (("bench", "--qemu-compare", ""), "argument --qemu-compare: invalid executable value: ''"),
    # bench had lower bounds only (probe --toggles and repro --runs have upper ones too)
    (("bench", "--toggles", "100001"), "--toggles 100001: from 1 to 100000"),
    (("bench", "--boots", "10001"), "--boots 10001: from 1 to 10000"),
    # a line break in what the user typed was echoed as is: two lines on stderr
    (("repro", "a\nb", "--dry-run"), "unknown scenario 'a\\nb'"),
    (("boot", "--dry-run", "--kernel", "6.1\r\n7.3"), "unknown kernel '6.1\\r\\n7.3'"),
    (("repro", "/nowhere/x\ny.toml", "--dry-run"), "scenario file /nowhere/x\\ny.toml: no such file"),
    (("boot", "--dry-run", "--artifacts", "/proc/a\nb"), "argument --artifacts: /proc/a\\nb: cannot be"),
])
def test_fourth_trial_bad_input_is_one_line(argv: tuple[str, ...], said: str, env: dict[str, str],
                                            tmp_path: Path) -> None:
    res = pokelab(*(a.replace("{tmp}", str(tmp_path)) for a in argv), env=env)
    assert_one_line_error(res, "usage", said)
    assert made(tmp_path) == []


def test_an_error_title_is_one_line() -> None:
    assert UsageError("a\nb\r\vc\fd").title == "a\\nb\\r\\x0bc\\x0cd"
    assert str(UsageError("x\ny")) == "x\\ny"
