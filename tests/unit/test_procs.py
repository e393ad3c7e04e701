"""Every child process goes through orchestrator/host/procs.py, with a deadline.

The scan is over the source (AST), so a new ``subprocess.run`` anywhere in the
package fails here before it ships.  ``orchestrator/gdb/data`` runs inside GDB and
starts nothing.
"""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import pytest

from orchestrator.host import procs

PACKAGE = Path(procs.__file__).resolve().parents[1]
OWNER = PACKAGE / "host" / "procs.py"
#: what starts a process (or waits on one without a bound) outside procs
SPAWNERS = {
    "subprocess": {"Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"},
    "os": {"system", "popen", "fork", "forkpty", "execv", "execve", "execvp", "execvpe", "execl",
           "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl",
           "spawnle", "spawnlp", "spawnlpe", "posix_spawn", "posix_spawnp"},
    "pexpect": {"spawn", "run", "runu"},
    "pty": {"spawn", "fork"},
    "asyncio": {"create_subprocess_exec", "create_subprocess_shell"},
    "multiprocessing": {"Process", "Pool"},
}
#: modules whose import alone means a process is started elsewhere than in procs
FORBIDDEN_IMPORTS = {"multiprocessing", "pty", "pexpect.popen_spawn", "pexpect.pty_spawn"}


def _sources() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if p != OWNER and "data" not in p.relative_to(PACKAGE).parts]


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path
    found = []
    # local names bound to the spawner modules or their functions (import x as y, from x import f)
    modules: dict[str, str] = {}
    functions: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in FORBIDDEN_IMPORTS:
                    found.append(f"{rel}:{node.lineno}: import {a.name}")
                root = a.name.split(".")[0]
                if root in SPAWNERS:
                    modules[a.asname or root] = root
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if node.module in FORBIDDEN_IMPORTS:
                found.append(f"{rel}:{node.lineno}: from {node.module} import")
            for a in node.names:
                if root in SPAWNERS and a.name in SPAWNERS[root]:
                    functions[a.asname or a.name] = f"{root}.{a.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in modules:
            root = modules[f.value.id]
            if f.attr in SPAWNERS[root]:
                found.append(f"{rel}:{node.lineno}: {root}.{f.attr}()")
        elif isinstance(f, ast.Name) and f.id in functions:
            found.append(f"{rel}:{node.lineno}: {functions[f.id]}()")
        # a Child's Popen reached through .proc and waited on without a bound
        if (isinstance(f, ast.Attribute) and f.attr in ("wait", "communicate")
                and isinstance(f.value, ast.Attribute) and f.value.attr == "proc"
                and not any(k.arg == "timeout" for k in node.keywords)):
            found.append(f"{rel}:{node.lineno}: .proc.{f.attr}() without a timeout")
    return found


def test_only_procs_starts_processes() -> None:
    sources = _sources()
    assert len(sources) > 40, sources  # the scan sees the package
    bad = [v for p in sources for v in _violations(p)]
    assert not bad, "start children with orchestrator.host.procs (a deadline, a parent-death signal):\n" + \
        "\n".join(bad)


def test_the_scan_sees_a_spawner(tmp_path: Path) -> None:
    """The guard itself: each way of starting a process is caught."""
    src = tmp_path / "spawner.py"
    src.write_text("import subprocess as sp\nimport os\nfrom subprocess import check_output as co\n"
                   "sp.run(['true'])\nos.system('true')\nco(['true'])\nchild.proc.wait()\n"
                   "child.proc.wait(timeout=1)\nsp.DEVNULL\n")
    got = _violations(src)
    assert [v.split(": ", 1)[1] for v in got] == [
        "subprocess.run()", "os.system()", "subprocess.check_output()", ".proc.wait() without a timeout"]


@pytest.mark.parametrize("bad", [math.inf, -1.0, math.nan])
def test_run_refuses_an_unbounded_deadline(bad: float) -> None:
    with pytest.raises(ValueError, match="deadline"):
        procs.run([sys.executable, "-c", "pass"], timeout=bad, what="python")


def test_run_kills_at_its_deadline() -> None:
    with pytest.raises(procs.InfraError, match="did not finish within"):
        procs.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5, what="sleeper")


def test_run_hands_back_output_and_status() -> None:
    res = procs.run([sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read()); sys.exit(3)"],
                    timeout=30, what="echo", stdin_data=b"hello", check=False)
    assert (res.returncode, res.stdout) == (3, b"hello")
