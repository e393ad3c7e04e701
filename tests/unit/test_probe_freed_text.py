"""The read-back of patched sites when their text went away (issue 12, item 2).

Seen live: kprobes on two functions of our module (control_write, counts_show),
left registered when ops-one's teardown unloaded the module; the read-back then
failed with "GDB: -data-read-memory-bytes: Unable to read memory." and the run
ended INFRA.  Text that goes away (a module unloaded, a trampoline freed with its
ftrace_ops, init text) is "not checked: freed"; the kernel's own text that does
not read stays an error.  The probe runs against fakegdb.py (MI records from a
real session; memory, expressions and the recorder's ops report scripted per stop).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from orchestrator.gdb.ledger import SiteState
from orchestrator.gdb.mi import MiError, MiSession
from orchestrator.gdb.probe import Probe
from orchestrator.gdb.readback import TextRegion, freed_reason
from orchestrator.gdb.symbols import KernelSymbolizer

FAKE = Path(__file__).resolve().parent / "fakegdb.py"

STEXT, ETEXT = 0xFFFFFFFF81000000, 0xFFFFFFFF81E01EF2  # the 6.1 kernel's System.map
CORE_SITE = 0xFFFFFFFF810B0F40  # __do_sys_getpid+0x0 in the captured 6.1 session
MOD_TEXT = 0xFFFFFFFFC0A00000  # pokelab_ops' text (core_layout.base), 0x2000 bytes
CONTROL_WRITE, COUNTS_SHOW = MOD_TEXT + 0x10, MOD_TEXT + 0x100
MODULE = 0xFFFFFFFFC0A04000  # its struct module
HEAD = 0xFFFFFFFF82B27160  # &modules
TRAMP = 0xFFFFFFFFC0C00000  # an ftrace_ops trampoline, 207 bytes
JMP32 = "e9aabbccdd"
OPS_EMPTY = 'POKELAB-OPS {"ops":[]}'
OPS_ONE = ('POKELAB-OPS {"ops":[{"ops":18446744071607392704,"func":18446744071580675344,"flags":10305,'
           f'"trampoline":{TRAMP},"trampoline_size":207}}]}}')


def walk(listed: bool) -> dict[str, str]:
    """GDB's answers for the walk of the module list (6.1 layout: core_layout, init_layout)."""
    mod = f"((struct module *){MODULE:#x})"
    return {
        "(unsigned long)&modules": str(HEAD),
        "(unsigned long)&((struct module *)0)->list": "8",
        "(unsigned long)&((struct module *)0)->core_layout.base": "352",
        "(unsigned long)modules.next": str(MODULE + 8 if listed else HEAD),
        f"{mod}->name": "\"pokelab_ops\", '\\000' <repeats 44 times>",
        f"(unsigned long){mod}->core_layout.base": str(MOD_TEXT),
        f"{mod}->core_layout.text_size": "8192",
        f"(unsigned long){mod}->init_layout.base": "0",
        f"{mod}->init_layout.text_size": "0",
        f"(unsigned long){mod}->list.next": str(HEAD),
    }


def probe_on(tmp_path: Path, **script: object) -> Probe:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    sym = KernelSymbolizer([(STEXT, 0x1000, "_stext"), (CORE_SITE, 0x10, "__do_sys_getpid"),
                            (ETEXT, 1, "_etext")])
    probe = Probe(Path("/nonexistent/vmlinux"), "127.0.0.1:1", tmp_path, sym, 5.0)
    probe._mi = MiSession([sys.executable, str(FAKE), str(path)], tmp_path / "mi.log", 5.0)
    probe._mi.add_console_hook(probe._on_console)  # as Probe.attach does
    probe.resume()
    return probe


def written(probe: Probe, site: int, text: str, name: str) -> None:
    """What the recorder reports for a batch entry: the site will hold ``text``."""
    probe.sites[site] = SiteState(bytes.fromhex(text), name, 1)
    probe.dirty_sites.add(site)


def test_sites_of_an_unloaded_module_are_freed_not_read_errors(tmp_path: Path) -> None:
    """The issue's instance: kprobe sites in our module, the module gone before the read-back."""
    probe = probe_on(tmp_path, memory={f"{CORE_SITE:x}": "e8bb60153f"}, expressions=walk(False),
                     console={"python pokelab_ops()": [OPS_EMPTY]})
    try:
        written(probe, CORE_SITE, "e8bb60153f", "__do_sys_getpid+0x0")
        written(probe, CONTROL_WRITE, JMP32, "control_write+0x0")
        written(probe, COUNTS_SHOW, JMP32, "counts_show+0x0")
        checks = probe.check_sites()
        assert [(c.site, c.ok) for c in checks] == [(CORE_SITE, True)]
        s = probe.summary()
        assert s["text_freed"] == 2 and s["text_mismatches"] == 0 and s["text_checks"] == 1
        assert all("Unable to read memory" in f["reason"] and "its text was freed" in f["reason"]
                   for f in probe.freed_sites)
    finally:
        probe.close()


def test_module_seen_loaded_then_unloaded_is_not_read_again(tmp_path: Path) -> None:
    """Once the module is off the list its old addresses are not read: the memory may hold other text."""
    live = {"memory": {f"{MOD_TEXT:x}": "90" * 0x10 + JMP32 + "90" * 0x1FEB}, "expressions": walk(True)}
    gone = {"memory": {f"{MOD_TEXT:x}": "cc" * 0x2000}, "expressions": walk(False)}
    probe = probe_on(tmp_path, console={"python pokelab_ops()": [OPS_EMPTY]}, phases=[live, gone])
    try:
        written(probe, CONTROL_WRITE, JMP32, "control_write+0x0")
        assert [c.ok for c in probe.check_sites()] == [True]
        written(probe, CONTROL_WRITE, JMP32, "control_write+0x0")
        assert probe.check_sites() == []
        assert probe.freed_sites == [{"site": f"{CONTROL_WRITE:#x}", "name": "control_write+0x0",
                                      "reason": "module pokelab_ops was unloaded: its text was freed"}]
        assert probe.summary()["text_mismatches"] == 0
    finally:
        probe.close()


def test_trampoline_of_unregistered_ops_is_freed(tmp_path: Path) -> None:
    site = TRAMP + 0x4D
    live = {"console": {"python pokelab_ops()": [OPS_ONE]}}
    gone = {"console": {"python pokelab_ops()": [OPS_EMPTY]}}
    probe = probe_on(tmp_path, memory={f"{TRAMP:x}": "90" * 0x4D + JMP32 + "90" * 0x7D},
                     expressions=walk(False), phases=[live, gone])
    try:
        written(probe, site, JMP32, "ops(x).trampoline+0x4d")
        assert [c.ok for c in probe.check_sites()] == [True]
        written(probe, site, "e8aabbccdd", "ops(x).trampoline+0x4d")
        assert probe.check_sites() == []  # the old bytes would have been a mismatch
        [freed] = probe.freed_sites
        assert "was freed (its ftrace_ops unregistered)" in freed["reason"]
    finally:
        probe.close()


def test_unreadable_core_text_stays_an_error(tmp_path: Path) -> None:
    probe = probe_on(tmp_path, expressions=walk(False), console={"python pokelab_ops()": [OPS_EMPTY]})
    try:
        written(probe, CORE_SITE, "e8bb60153f", "__do_sys_getpid+0x0")
        with pytest.raises(MiError, match="Unable to read memory"):
            probe.check_sites()
        assert probe.freed_sites == []
    finally:
        probe.close()


def test_unreadable_text_of_a_loaded_module_stays_an_error(tmp_path: Path) -> None:
    probe = probe_on(tmp_path, expressions=walk(True), console={"python pokelab_ops()": [OPS_EMPTY]})
    try:
        written(probe, CONTROL_WRITE, JMP32, "control_write+0x0")
        with pytest.raises(MiError, match="Unable to read memory"):
            probe.check_sites()
    finally:
        probe.close()


def test_freed_reason_rules() -> None:
    mod = TextRegion("module", "m", 0x1000, 0x2000)
    init = TextRegion("module-init", "m", 0x3000, 0x3100)
    tramp = TextRegion("trampoline", "ops(f).trampoline", 0x5000, 0x50CF)
    assert freed_reason(0x1010, [mod], mod, [], True) is None  # still loaded
    assert freed_reason(0x1010, [], mod, [], True) == "module m was unloaded: its text was freed"
    assert freed_reason(0x1010, [], mod, [], False) is None  # no module list: read it
    assert freed_reason(0x3010, [mod], init, [], True) == (
        "the init text of module m was freed when the module's init ended")
    assert freed_reason(0x5010, [], None, [tramp], False) == (
        "ops(f).trampoline was freed (its ftrace_ops unregistered)")
    assert freed_reason(0x9000, [], None, [tramp], True) is None  # never seen: read it


# the bpf-tailcall scenario on 6.1.0-57 (tests/vm/test_bpf_tailcall.py): GDB's answers for the walk of
# bpf_kallsyms (kernel/bpf/core.c) with its two programs loaded, from the run's mi.log
BPF_HEAD, BPF_TC = 0xFFFFFFFF82B44530, 0xFFFFFFFFC00006E0  # &bpf_kallsyms; pokelab_tc's ksym.start
BPF_SITE = BPF_TC + 0x2C  # its tailcall_bypass
BPF_NAME = "bpf_prog_f803421b5e8d137f_pokelab_tc"


def bpf_walk(loaded: bool) -> dict[str, str]:
    tgt, tc = "((struct bpf_ksym *)0xffff888003df88f8)", "((struct bpf_ksym *)0xffff888003dfe0f8)"
    return {**walk(False),
            "(unsigned long)&bpf_kallsyms": str(BPF_HEAD),
            "(unsigned long)&((struct bpf_ksym *)0)->lnode": "528",
            "(unsigned long)bpf_kallsyms.next": str(0xFFFF888003DF88F8 + 528 if loaded else BPF_HEAD),
            f"{tgt}->name": "\"bpf_prog_42341c82f6736baa_pokelab_tc_tgt\", '\\000' <repeats 471 times>",
            f"{tgt}->start": str(0xFFFFFFFFC0000654), f"{tgt}->end": str(0xFFFFFFFFC00006AE),
            f"(unsigned long){tgt}->lnode.next": str(0xFFFF888003DFE0F8 + 528),
            f"{tc}->name": f"\"{BPF_NAME}\", '\\000' <repeats 475 times>",
            f"{tc}->start": str(BPF_TC), f"{tc}->end": str(BPF_TC + 63),
            f"(unsigned long){tc}->lnode.next": str(BPF_HEAD)}


def test_bpf_text_is_read_back_while_loaded_and_freed_after(tmp_path: Path) -> None:
    """A tail-call site in a JITed program: named from bpf_kallsyms and attributed to bpf while the
    program is loaded; once the loader exited (its pack chunk refilled with int3), not read again."""
    live = {"memory": {f"{BPF_TC:x}": "90" * 0x2C + JMP32 + "90" * 0xE}, "expressions": bpf_walk(True)}
    gone = {"memory": {f"{BPF_TC:x}": "cc" * 0x3F}, "expressions": bpf_walk(False)}
    probe = probe_on(tmp_path, console={"python pokelab_ops()": [OPS_EMPTY]}, phases=[live, gone])
    try:
        written(probe, BPF_SITE, JMP32, "?")
        assert [(c.ok, c.name) for c in probe.check_sites()] == [(True, f"{BPF_NAME}+0x2c")]
        assert probe.census.site_user(BPF_SITE).as_record() == {
            "user": "bpf", "user_how": f"region:{BPF_NAME}", "user_key": BPF_NAME}
        assert probe.sym(BPF_SITE) == f"{BPF_NAME}+0x2c"
        written(probe, BPF_SITE, "0f1f440000", f"{BPF_NAME}+0x2c")
        assert probe.check_sites() == []  # the int3 fill would have been a mismatch
        assert probe.freed_sites == [{"site": f"{BPF_SITE:#x}", "name": f"{BPF_NAME}+0x2c", "reason":
                                      f"{BPF_NAME} was freed (its BPF program, trampoline or dispatcher "
                                      "released)"}]
        assert probe.summary()["text_mismatches"] == 0
    finally:
        probe.close()


def test_bpf_text_with_no_walk_is_read_as_before(tmp_path: Path) -> None:
    """No bpf_kallsyms in the debug info: nothing is known to be freed; what reads is compared."""
    probe = probe_on(tmp_path, memory={f"{BPF_TC:x}": "cc" * 0x3F}, expressions=walk(False),
                     console={"python pokelab_ops()": [OPS_EMPTY]})
    try:
        written(probe, BPF_SITE, JMP32, "?")
        assert [c.ok for c in probe.check_sites()] == [False]
        assert probe.freed_sites == []
    finally:
        probe.close()


def test_freed_reason_for_bpf_text() -> None:
    prog = TextRegion("bpf", "bpf_prog_x_y", 0x7000, 0x7040)
    assert freed_reason(0x7010, [prog], prog, [prog], True, True) is None  # loaded
    why = "bpf_prog_x_y was freed (its BPF program, trampoline or dispatcher released)"
    assert freed_reason(0x7010, [], prog, [prog], True, True) == why
    assert freed_reason(0x7010, [], None, [prog], False, True) == why  # seen at an earlier check
    assert freed_reason(0x7010, [], prog, [prog], True, False) is None  # the list was not walked


def test_freed_text_is_not_a_mismatch_and_is_said() -> None:
    from orchestrator.core.verdict import decide

    out = decide({"traps_judged": 40, "violations": 0, "text_checks": 12, "text_mismatches": 0,
                  "text_freed": 2}, crashes=[])
    assert out.verdict == "PASS"
    assert out.reasons == ("40 trap(s) judged, 0 violations, 12 site read-backs matched "
                           "(2 not checked: text freed)",)


def test_module_sites_are_named_by_the_module() -> None:
    from orchestrator.gdb.readback import region_name

    mod = TextRegion("module", "pokelab_ops", 0x1000, 0x2000)
    assert region_name("?", 0x1050, mod) == "pokelab_ops.text+0x50"
    assert region_name("control_write+0x0", 0x1050, mod) == "control_write+0x0"
    assert region_name("?", 0x1050, None) == "?"
    assert region_name("?", 0x3010, TextRegion("module-init", "m", 0x3000, 0x3100)) == "m.init.text+0x10"
    assert region_name("?", 0x702C, TextRegion("bpf", "bpf_prog_x_y", 0x7000, 0x7040)) == "bpf_prog_x_y+0x2c"
