"""Bad input through the real ``pokelab`` CLI: exit 2, one stderr line, no traceback, no hang.

Nothing here boots a guest: every case fails before QEMU starts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import assert_one_line_error, pokelab
from fakekernel import write_pair

from orchestrator.cli import main


@pytest.fixture
def art(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


@pytest.fixture
def fake_pair(tmp_path: Path) -> tuple[Path, Path]:
    """(bzImage, vmlinux) that pass the CLI's checks; nothing gets as far as booting them."""
    return write_pair(tmp_path / "kernel")


@pytest.fixture
def listener() -> Iterator[int]:
    """A port held (listening) on 127.0.0.1 for the test's duration."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


# --------------------------------------------------------------------------- kernel choice


def test_unknown_kernel_id(art: Path) -> None:
    res = pokelab("boot", "--kernel", "no-such-kernel", "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "unknown kernel 'no-such-kernel'", "6.1")


def test_unknown_kernel_id_run_cmd(art: Path) -> None:
    res = pokelab("run-cmd", "--kernel", "2.6.x", "--artifacts", str(art), "--", "true",
                  artifacts=art)
    assert_one_line_error(res, "usage", "unknown kernel '2.6.x'")


def test_modules_without_bzimage(art: Path, tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text("")
    res = pokelab("run-cmd", "--kernel", "6.1", "--modules", str(tmp_path), "--artifacts", str(art), "--",
                  "true", artifacts=art)
    assert_one_line_error(res, "usage", "--modules goes with --bzimage/--vmlinux")


def test_modules_dir_without_modules_dep(art: Path, tmp_path: Path) -> None:
    res = pokelab("run-cmd", "--kernel", "6.1", "--modules", str(tmp_path), "--artifacts", str(art), "--",
                  "true", artifacts=art)
    assert_one_line_error(res, "usage", f"--modules {tmp_path}: no modules.dep there")


def test_bzimage_missing_path(tmp_path: Path, art: Path) -> None:
    missing = tmp_path / "nope" / "bzImage"
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"")
    res = pokelab("boot", "--bzimage", str(missing), "--vmlinux", str(vmlinux),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "--bzimage", str(missing))


def test_vmlinux_missing_path(tmp_path: Path, art: Path) -> None:
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"x")
    res = pokelab("boot", "--bzimage", str(bz), "--vmlinux", str(tmp_path / "vmlinux"),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "--vmlinux")


def test_bzimage_without_vmlinux(tmp_path: Path, art: Path) -> None:
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"not really a kernel")
    res = pokelab("boot", "--bzimage", str(bz), "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "--bzimage and --vmlinux")


def test_kernel_and_bzimage_together(tmp_path: Path, art: Path) -> None:
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"x")
    res = pokelab("boot", "--kernel", "6.1", "--bzimage", str(bz), "--vmlinux", str(bz),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "either --kernel or --bzimage")


def test_vmlinux_build_id_mismatch(tmp_path: Path, art: Path) -> None:
    bz, _ = write_pair(tmp_path / "a", b"\x61" * 20)
    _, vmlinux = write_pair(tmp_path / "b", b"\x62" * 20)
    res = pokelab("boot", "--bzimage", str(bz), "--vmlinux", str(vmlinux),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "is not the vmlinux of", "6262626262", "6161616161")


def test_vmlinux_without_debug_info(tmp_path: Path, art: Path) -> None:
    bz, vmlinux = write_pair(tmp_path / "k", debug_info=False)
    res = pokelab("boot", "--bzimage", str(bz), "--vmlinux", str(vmlinux),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", "no .debug_info")


def test_vmlinux_not_elf(tmp_path: Path, art: Path, fake_pair: tuple[Path, Path]) -> None:
    junk = tmp_path / "vmlinux"
    junk.write_bytes(b"\x7fELF this is not an ELF file at all" * 4)
    res = pokelab("boot", "--bzimage", str(fake_pair[0]), "--vmlinux", str(junk),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", str(junk))


def test_bzimage_not_a_kernel(tmp_path: Path, art: Path, fake_pair: tuple[Path, Path]) -> None:
    junk = tmp_path / "bzImage"
    junk.write_bytes(os.urandom(8192))
    res = pokelab("boot", "--bzimage", str(junk), "--vmlinux", str(fake_pair[1]),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", str(junk))


# --------------------------------------------------------------------------- ports


def _kernel_args(pair: tuple[Path, Path]) -> list[str]:
    """A kernel that is no download: a regression past the port check fails on it, offline."""
    return ["--bzimage", str(pair[0]), "--vmlinux", str(pair[1])]


def test_busy_gdb_port(listener: int, art: Path, fake_pair: tuple[Path, Path]) -> None:
    res = pokelab("boot", "--gdb-port", str(listener), *_kernel_args(fake_pair), "--artifacts", str(art),
                  artifacts=art)
    assert_one_line_error(res, "usage", f"port {listener}", "busy")


def test_busy_ssh_port(listener: int, art: Path, fake_pair: tuple[Path, Path]) -> None:
    res = pokelab("run-cmd", "--ssh-port", str(listener), *_kernel_args(fake_pair), "--artifacts", str(art),
                  "--", "true", artifacts=art)
    assert_one_line_error(res, "usage", f"port {listener}", "busy")


@pytest.mark.parametrize("option, port", [("--gdb-port", "70000"), ("--ssh-port", "-5"),
                                          ("--gdb-port", "0")])
def test_port_out_of_range(option: str, port: str, art: Path, fake_pair: tuple[Path, Path]) -> None:
    res = pokelab("boot", option, port, *_kernel_args(fake_pair), "--accel", "tcg", "--artifacts", str(art),
                  artifacts=art)
    assert_one_line_error(res, "usage", f"port {port}", "1..65535")


def test_same_port_for_gdb_and_ssh(art: Path, fake_pair: tuple[Path, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = pokelab("boot", "--gdb-port", str(port), "--ssh-port", str(port), *_kernel_args(fake_pair),
                  "--artifacts", str(art), artifacts=art)
    assert_one_line_error(res, "usage", f"share port {port}")


@pytest.mark.parametrize("args", [
    ["boot", "--qemu", "{missing}"],
    ["probe", "--qemu", "{plain}", "--toggles", "1"],
    ["repro", "ftrace-function", "--qemu", "{missing}"],
    ["nightly", "--qemu", "{missing}", "--dry-run"],
    ["bench", "--part", "vm", "--qemu-compare", "{plain}"],
])
def test_bad_qemu_path(args: list[str], tmp_path: Path, art: Path) -> None:
    """``--qemu``/``--qemu-compare`` name an executable file, checked before anything slow."""
    plain = tmp_path / "qemu-plain"
    plain.write_text("not a program\n")
    words = [a.format(missing=tmp_path / "no-qemu", plain=plain) for a in args]
    res = pokelab(*words, "--artifacts", str(art), artifacts=art) if words[0] != "bench" else \
        pokelab(*words, "--out", str(tmp_path / "bench.json"), artifacts=art)
    line = assert_one_line_error(res, "usage", "--qemu")
    assert ("no such file" in line) if "{missing}" in args else ("not executable" in line)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("tail", [[], ["--"]])
def test_run_cmd_without_command(tail: list[str], art: Path) -> None:
    res = pokelab("run-cmd", "--artifacts", str(art), *tail, artifacts=art)
    assert_one_line_error(res, "usage", "run-cmd needs a guest command")
    assert not art.exists(), "nothing should be created for a rejected command line"


@pytest.mark.parametrize("args, needles", [
    (["frobnicate"], ["frobnicate", "invalid choice"]),
    ([], ["required", "COMMAND"]),
    (["probe", "--inject", "scramble"], ["--inject", "scramble"]),
    (["boot", "--accel", "hvf"], ["--accel", "hvf"]),
    (["boot", "--smp", "many"], ["--smp", "many"]),
    (["boot", "--no-such-option"], ["--no-such-option"]),
])
def test_argparse_errors_are_one_line(args: list[str], needles: list[str], art: Path) -> None:
    res = pokelab(*args, artifacts=art)
    assert_one_line_error(res, "usage", *needles)


def test_bad_toggles(art: Path) -> None:
    """Checked before the kernel (the smp and memory checks need one: tests/host)."""
    res = pokelab("probe", "--toggles", "0", "--dry-run", "--accel", "tcg", "--artifacts", str(art),
                  artifacts=art)
    assert_one_line_error(res, "usage", "--toggles")


def test_main_entry_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    """The console-script entry itself: argparse errors leave through SystemExit(2), one line."""
    with pytest.raises(SystemExit) as exc:
        main(["--frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pokelab: usage: ") and "Traceback" not in err


@pytest.mark.parametrize(("args", "needle"), [
    (["--scenario", "ftrace-function"], "give --source DIR --good REV --bad REV, or --debian GOOD..BAD"),
    (["--source", ".", "--scenario", "ftrace-function"], "or --debian GOOD..BAD"),
    (["--debian", "6.1.0-47", "--scenario", "ftrace-function"], "--debian wants GOOD..BAD"),
    (["--debian", "6.1..6.12", "--good", "x", "--scenario", "ftrace-function"], "--good does not go with"),
    (["--debian", "6.1..6.12", "--scenario", "no-such"], "unknown scenario 'no-such'"),
    (["--debian", "6.1..6.12", "--kernel", "6.1", "--scenario", "ftrace-function"],
     "unrecognized arguments: --kernel 6.1"),
])
def test_bisect_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    res = pokelab("bisect", *args, artifacts=tmp_path)
    assert_one_line_error(res, "usage", needle)


# --------------------------------------------------------------------------- every path argument
#
# Every path and file a subcommand takes is checked while the command line is parsed
# (orchestrator/host/userpaths.py, through cli/parser.py): a missing file, a directory, a binary
# file where text is read, a file that cannot be read, a place where nothing can be created: one line
# ``pokelab: usage: argument OPT: PATH: why`` and exit 2, before anything runs.

IN_BIN, IN_TEXT, IN_TEXT_OR_DIR, IN_DIR, OUT_DIR, OUT_FILE, OUT_FILE_CREATE = (
    "input file", "input text file", "input text file or dir", "input dir", "output dir",
    "output file (dir exists)", "output file (dir created)")

VM_PATHS = [("--bzimage", IN_BIN), ("--vmlinux", IN_BIN), ("--artifacts", OUT_DIR)]

#: (argv before the option, argv after it, option or "" for a positional, kind)
PATH_ARGS: list[tuple[tuple[str, ...], tuple[str, ...], str, str]] = [
    *[(("boot",), (), o, k) for o, k in VM_PATHS],
    *[(("run-cmd",), ("--", "true"), o, k) for o, k in VM_PATHS],
    *[(("probe",), (), o, k) for o, k in [*VM_PATHS, ("--json", OUT_FILE)]],
    *[(("repro", "ftrace-function"), (), o, k)
      for o, k in [*VM_PATHS, ("--workload", IN_BIN), ("--json", OUT_FILE)]],
    (("bench",), (), "--out", OUT_FILE_CREATE),
    (("build-kernel",), (), "--source", IN_DIR),
    (("build-kernel",), (), "--patches", IN_TEXT_OR_DIR),
    (("build-kernel",), (), "--config-fragment", IN_TEXT),
    (("build-kernel",), (), "--out", OUT_DIR),
    (("nightly",), (), "--out", OUT_DIR),
    (("nightly",), (), "--previous", IN_TEXT),
    (("nightly",), (), "--known-issues", IN_TEXT),
    (("nightly",), (), "--kcidb", OUT_FILE_CREATE),
    (("merge",), ("{summary}",), "", OUT_DIR),
    (("merge", "{out}"), (), "", IN_TEXT),
    (("merge", "{out}", "{summary}"), (), "--previous", IN_TEXT),
    (("merge", "{out}", "{summary}"), (), "--known-issues", IN_TEXT),
    (("merge", "{out}", "{summary}"), (), "--kcidb", OUT_FILE_CREATE),
    (("bisect", "--scenario", "ftrace-function", "--debian", "6.1..6.12"), (), "--source", IN_DIR),
    (("bisect", "--scenario", "ftrace-function", "--debian", "6.1..6.12"), (), "--log", OUT_FILE_CREATE),
    (("bisect", "--scenario", "ftrace-function", "--debian", "6.1..6.12"), (), "--replay", IN_TEXT),
    (("bisect", "--scenario", "ftrace-function", "--debian", "6.1..6.12"), (), "--artifacts", OUT_DIR),
]

#: kind: the bad inputs it must refuse (case name -> words expected in the line)
CASES: dict[str, dict[str, str]] = {
    IN_BIN: {"missing": "no such file", "directory": "is a directory", "unreadable": "cannot read"},
    IN_TEXT: {"missing": "no such file", "directory": "is a directory", "binary": "a binary file",
              "unreadable": "cannot read"},
    IN_TEXT_OR_DIR: {"missing": "no such file or directory", "binary": "a binary file",
                     "unreadable": "cannot read"},
    IN_DIR: {"missing": "no such directory", "file": "not a directory", "through-a-file": "Not a directory"},
    OUT_DIR: {"file": "not a directory", "uncreatable": "cannot be created under /proc",
              "through-a-file": "Not a directory"},
    OUT_FILE: {"directory": "is a directory", "uncreatable": "does not exist",
               "unwritable-dir": "cannot write in /proc"},
    OUT_FILE_CREATE: {"directory": "is a directory", "uncreatable": "cannot be created under /proc",
                      "through-a-file": "Not a directory"},
}


def bad_path(case: str, tmp: Path) -> str:
    """A path that is bad in the way ``case`` says (made under ``tmp``)."""
    afile = tmp / "plain.txt"
    afile.write_text("some text\n")
    if case == "missing":
        return str(tmp / "no-such-thing")
    if case in ("directory",):
        return str(tmp)
    if case == "file":
        return str(afile)
    if case == "binary":
        binary = tmp / "blob.bin"
        binary.write_bytes(bytes(range(256)) * 64)  # NULs and bytes that are not UTF-8
        return str(binary)
    if case == "unreadable":
        if os.geteuid() == 0:  # root reads any mode: reading this one's offset 0 fails (EIO)
            return "/proc/self/mem"
        locked = tmp / "locked.txt"
        locked.write_text("secret\n")
        locked.chmod(0)
        return str(locked)
    if case == "through-a-file":
        return str(afile / "sub")
    if case == "uncreatable":
        return "/proc/pokelab-x/out.json"
    if case == "unwritable-dir":
        return "/proc/pokelab-out.json"
    raise AssertionError(case)


def _path_cases() -> list[tuple[tuple[str, ...], tuple[str, ...], str, str, str]]:
    return [(before, after, opt, kind, case) for before, after, opt, kind in PATH_ARGS
            for case in CASES[kind]]


@pytest.mark.parametrize("before, after, opt, kind, case", _path_cases(),
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_every_path_argument_is_checked(before: tuple[str, ...], after: tuple[str, ...], opt: str,
                                        kind: str, case: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    good_summary = tmp_path / "summary.json"
    good_summary.write_text("{}\n")
    fill = {"{summary}": str(good_summary), "{out}": str(tmp_path / "merged")}
    bad = bad_path(case, tmp_path)
    argv = [fill.get(a, a) for a in before] + ([opt] if opt else []) + [bad] + [fill.get(a, a) for a in after]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("pokelab: usage: argument "), err
    assert bad in err and CASES[kind][case] in err, err
    assert not (tmp_path / "merged").exists()


def test_the_issue_s_inputs_through_the_real_cli(tmp_path: Path) -> None:
    """Issue 12: a binary --replay and --artifacts under /proc ended with a traceback."""
    blob = tmp_path / "replay.bin"
    blob.write_bytes(os.urandom(4096) + b"\0")
    res = pokelab("bisect", "--debian", "6.1..6.12", "--scenario", "ftrace-function",
                  "--replay", str(blob), artifacts=tmp_path)
    assert_one_line_error(res, "usage", "--replay", "a binary file")
    res = pokelab("bisect", "--debian", "6.1..6.12", "--scenario", "ftrace-function",
                  "--artifacts", "/proc/x", artifacts=tmp_path)
    assert_one_line_error(res, "usage", "--artifacts", "/proc/x", "cannot be created")
    res = pokelab("build-kernel", "--source", str(tmp_path / "no-tree"), artifacts=tmp_path)
    assert_one_line_error(res, "usage", "--source", "no such directory")


def test_build_kernel_checks_the_tree_before_the_tools(tmp_path: Path) -> None:
    """A --source that is no kernel tree is the user's mistake, said first even with no ccache."""
    (tmp_path / "bin").mkdir()
    env = dict(os.environ, PATH=str(tmp_path / "bin"))
    res = pokelab("build-kernel", "--source", str(tmp_path), env=env, artifacts=tmp_path)
    assert_one_line_error(res, "usage", "is not a kernel source tree")


def test_missing_build_tools_name_the_command_that_installs_them() -> None:
    from orchestrator.core.errors import InfraError
    from orchestrator.kernels.kbuild import check_build_tools

    with pytest.raises(InfraError) as exc:
        check_build_tools(lambda tool: None if tool in ("ccache", "flex") else f"/usr/bin/{tool}")
    assert exc.value.title == ("kernel builds need ccache, flex: apt-get install ccache flex "
                               "(or `make kbuild-deps`: every kernel-build package)")
    check_build_tools(lambda tool: f"/usr/bin/{tool}")


@pytest.mark.parametrize("command", [["probe"], ["repro", "ftrace-function", "--kernel", "7.3"], ["boot"],
                                     ["run-cmd", "--machine", "microvm", "--dry-run", "--", "true"]])
def test_dry_run_touches_nothing(command: list[str], tmp_path: Path) -> None:
    """``--dry-run`` on a machine that has nothing yet: the QEMU line, with the kernel not yet resolved
    named as such, and not one file or directory made (no cache, no artifacts, no download)."""
    cache, art = tmp_path / "cache", tmp_path / "art"
    env = {**os.environ, "POKELAB_CACHE": str(cache), "HOME": str(tmp_path / "home")}
    res = pokelab(*command, *([] if "--" in command else ["--dry-run"]), env=env, artifacts=art)
    assert res.returncode == 0, res.stderr
    assert "-kernel" in res.stdout and "resolved when first fetched" in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a dry run made files"


@pytest.mark.parametrize("args, needle", [
    (["kernels", "--debian", "--remove", "6.1"], "does not go with --debian"),
    (["bench", "--boots", "0"], "--boots"),
    (["bisect", "--scenario", "ftrace-function", "--debian", "6.1.0-47..6.1", "-j", "0"], "-j"),
    (["run-cmd", "--timeout", "0", "--dry-run", "--", "true"], "--timeout"),
    (["nightly", "--kernels", "6.1,6.1", "--dry-run"], "named twice"),
])
def test_more_bad_input_is_one_usage_line(args: list[str], needle: str, tmp_path: Path) -> None:
    """Found by trying the CLI as a new user: each of these once did something (deleted a kernel,
    booted a bisect, crashed in statistics) instead of refusing; nothing may be touched."""
    env = {**os.environ, "POKELAB_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path / "home")}
    res = pokelab(*args, "--out", str(tmp_path / "b.json")) if args[0] == "bench" else pokelab(*args, env=env)
    assert_one_line_error(res, "usage", needle)


@pytest.mark.parametrize("content", ['[1, 2]', '{"results": [{"kernel_id": "6.1", "scenario": "x"}]}', '"x"'])
def test_a_summary_of_the_wrong_shape_is_a_usage_error(content: str, tmp_path: Path) -> None:
    bad = tmp_path / "summary.json"
    bad.write_text(content)
    assert_one_line_error(pokelab("merge", str(tmp_path / "out"), str(bad)), "usage", "not a pokelab nightly")
    res = pokelab("nightly", "--kernels", "6.1", "--dry-run", "--previous", str(bad),
                  "--out", str(tmp_path / "n"))
    assert_one_line_error(res, "usage", "--previous")
