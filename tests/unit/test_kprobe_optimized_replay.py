"""An optimized kprobe on 7.3 (6.16+ recorder): the kprobe's own int3 is not the batch's trap.

``kprobe-optimized-7.3-pass.mi.log``: the GDB/MI transcript of `pokelab repro
kprobe-optimized --kernel 7.3.4+deb13-cloud-amd64` (PASS, 142 traps judged),
trimmed to its POKELAB- records but POKELAB-OTHER.  The kprobe at
__x64_sys_getpid+0x9 is armed (an int3 written by plain text_poke()) before
the optimizer's batch writes its JMP32 there; a CPU that hits that int3 after
``smp_text_poke_batch_finish()`` began and before it set the per-CPU refs
traps with refs == 0 while the batch runs, and the handler rightly returns 0
(kprobes then take it).  The batch record says which sites held an int3
before the batch (``int3_before``); without that the judge calls those traps
"declined live site" (the first run of this scenario on 7.3 said FAIL so).
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.core.trapdata import int3_before_sites
from orchestrator.gdb.mi import console_lines, parse_transcript
from orchestrator.gdb.probe import Probe
from orchestrator.gdb.symbols import KernelSymbolizer

LOG = Path(__file__).resolve().parent.parent / "data" / "mi" / "kprobe-optimized-7.3-pass.mi.log"
SITE = 0xFFFFFFFF813797A9  # __x64_sys_getpid+0x9 in 7.3.4+deb13-cloud-amd64


def replay(tmp_path: Path, keep_int3_before: bool = True) -> Probe:
    probe = Probe(Path("/nonexistent/vmlinux"), "127.0.0.1:1", tmp_path, KernelSymbolizer([]), 1.0)
    for line in console_lines(parse_transcript(LOG.read_text())):
        tag, _, rest = line.partition(" ")
        if tag == "POKELAB-BATCH" and not keep_int3_before:
            obj = json.loads(rest)
            obj.pop("int3_before", None)
            line = f"{tag} {json.dumps(obj)}"
        probe.ingest(line)
    return probe


def test_batches_name_the_sites_that_already_held_an_int3() -> None:
    batches = [json.loads(ln.partition(" ")[2]) for ln in console_lines(parse_transcript(LOG.read_text()))
               if ln.startswith("POKELAB-BATCH ")]
    owned = [b for b in batches if b.get("int3_before")]
    assert owned and all(int3_before_sites(b) == {SITE} for b in owned)  # the optimizer's batches
    assert int3_before_sites({"int3_before": ["zz", 5]}) == {5} and int3_before_sites({}) == frozenset()


def test_the_kprobes_own_int3_is_not_judged(tmp_path: Path) -> None:
    s = replay(tmp_path).summary()
    assert s["violations"] == 0 and s["traps_judged"] == 142
    assert s["not_text_poke"] == 5
    assert s["sites"][f"{SITE:#x}"]["traps"] == 46


def test_without_the_record_those_traps_are_false_flags(tmp_path: Path) -> None:
    s = replay(tmp_path, keep_int3_before=False).summary()
    assert s["violations"] == s["false_flags"] == 5
