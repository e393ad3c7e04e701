"""The census on real table bytes and real trap records (tests/data/census, captured from Debian 6.1.0-56).

The extract holds a few entries of each table around the sites that trapped in
``pokelab repro ftrace-function`` and ``static-call-preempt`` (with and without
``--inject wrong-target``), the symbols the census needs, the bytes of the
preempt ``__SCT__`` trampolines as built, and the trap records as the probe wrote them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import census
from orchestrator.core.census import (
    Census,
    KernelTables,
    TableError,
    build_tables,
    parse_jump_table,
    parse_mcount_loc,
    parse_static_call_sites,
    static_call_form,
    static_call_sites,
)

DATA = json.loads((Path(__file__).parents[1] / "data" / "census" / "debian-6.1.0-56.json").read_text())
SYMS: dict[str, int] = {n: a for a, n in DATA["symbols"]}


def _chunks(name: str) -> list[tuple[int, bytes]]:
    return [(c["addr"], bytes.fromhex(c["hex"])) for c in DATA[name]]


def tables() -> KernelTables:
    """The extract's tables, as build_tables would make them from the whole vmlinux."""
    mcount = [a for _at, blob in _chunks("mcount_loc") for a in parse_mcount_loc(blob)]
    jump = {s: k for at, blob in _chunks("jump_table") for s, _t, k in parse_jump_table(blob, at)}
    sc = {s: k for at, blob in _chunks("static_call_sites")
          for s, k, _tail in parse_static_call_sites(blob, at)}
    keys = {a: n.removeprefix("__SCK__") for a, n in DATA["symbols"] if n.startswith("__SCK__")}
    keys.update(census.name_addresses([(a, 0, n) for a, n in DATA["symbols"]], set(jump.values())))
    tramps = {a: n.removeprefix("__SCT__") for a, n in DATA["symbols"] if n.startswith("__SCT__")}
    return KernelTables(
        tuple(sorted(mcount)), jump, sc, tramps, keys,
        ((SYMS["ftrace_caller"], SYMS["ftrace_caller_end"], "ftrace_caller"),),
        (SYMS["__static_call_text_start"], SYMS["__static_call_text_end"]),
        (SYMS["__init_begin"], SYMS["__init_end"]))  # fmt: skip


def test_parsers_find_the_sites_that_trapped() -> None:
    t = tables()
    trapped = {int(r["site"], 16): r["user"] for r in DATA["traps"]}
    for site, user in trapped.items():
        table = {"ftrace": t.mcount, "jump_label": t.jump, "static_call": t.static_call}[user]
        assert site in table, (hex(site), user)


def test_jump_entry_is_relative_to_each_field() -> None:
    # struct jump_entry { s32 code; s32 target; long key; }: code/target/key relative to their own field
    at, blob = _chunks("jump_table")[0]
    site, target, key = parse_jump_table(blob[:16], at)[0]
    code, tgt, k = int.from_bytes(blob[0:4], "little", signed=True), \
        int.from_bytes(blob[4:8], "little", signed=True), int.from_bytes(blob[8:16], "little", signed=True)
    assert site == at + code and target == at + 4 + tgt and key == at + 8 + (k & ~3)
    assert site != target and key in tables().keys


def test_bad_table_sizes_are_errors() -> None:
    with pytest.raises(TableError):
        parse_mcount_loc(b"\0" * 12)
    with pytest.raises(TableError):
        parse_jump_table(b"\0" * 20, 0)
    with pytest.raises(TableError):
        parse_static_call_sites(b"\0" * 9, 0)


@pytest.mark.parametrize("rec", DATA["traps"], ids=lambda r: f"{r['run']}-{r['symbol']}-{r['target_name']}")
def test_captured_traps_get_the_users_they_were_given(rec: dict[str, Any]) -> None:
    c = Census(tables())
    target = int(rec["target"], 16) if rec.get("target") else None
    a = c.attribute(int(rec["site"], 16), target, rec["symbol"], rec["target_name"])
    assert (a.user, a.how, a.key) == (rec["user"], rec["user_how"], rec.get("user_key"))


def test_static_call_keys_are_named() -> None:
    keys = {r.get("user_key") for r in DATA["traps"] if r["user"] == "static_call"}
    assert {"cond_resched", "irqentry_exit_cond_resched"} <= keys
    jl = {r.get("user_key") for r in DATA["traps"] if r["user"] == "jump_label"}
    assert all(k for k in jl), jl  # every static key got a symbol (sym or sym+off)


def test_trampoline_and_ftrace_text_and_regions() -> None:
    c = Census(tables())
    tramp = SYMS["__SCT__cond_resched"]
    assert c.site_user(tramp).as_record() == {"user": "static_call", "user_how": "static_call_tramp",
                                              "user_key": "cond_resched"}
    assert c.site_user(SYMS["ftrace_caller"] + 0x7e).user == "ftrace"
    assert c.site_user(0xFFFFFFFFC0201000).user == "unknown"
    # a livepatch's ftrace_ops trampoline: the fentry site that now calls it is livepatch's
    c.add_region(0xFFFFFFFFC0201000, 0x100, census.ops_user("klp_ftrace_handler+0x0"), "ops(f).trampoline")
    fentry = next(int(r["site"], 16) for r in DATA["traps"] if r["user"] == "ftrace")
    assert c.attribute(fentry, 0xFFFFFFFFC0201010).user == "livepatch"
    assert c.attribute(fentry, SYMS["ftrace_caller"]).user == "ftrace"
    assert c.site_user(0xFFFFFFFFC0201005).how == "region:ops(f).trampoline"
    with pytest.raises(ValueError):
        c.add_region(0, 1, "nobody", "x")


def test_name_fallback_is_marked() -> None:
    c = Census(KernelTables())
    a = c.attribute(0xFFFFFFFFC0001000, 0xFFFFFFFFC0002000, "pokelab_ops_fn+0x0", "bpf_trampoline_123+0x0")
    assert (a.user, a.how) == ("bpf", "name")
    assert c.attribute(0xFFFFFFFFC0001000).user == "unknown"
    assert census.ops_user("function_trace_call+0x0") == "ftrace"
    assert census.ops_user("kprobe_ftrace_handler") == "kprobe"


def test_tables_json_round_trip() -> None:
    t = tables()
    back = KernelTables.from_json(json.loads(json.dumps(t.to_json())))
    assert back == t and back.counts()["static_call_sites"] == len(t.static_call)
    with pytest.raises(TableError):
        KernelTables.from_json({"jump": [["x", 1]]})


def test_build_tables_from_symbols_and_bytes() -> None:
    names = ("mcount_loc", "jump_table", "static_call_sites")
    memory = {at: blob for name in names for at, blob in _chunks(name)}
    (mc_at, mc), (jt_at, jt), (sc_at, sc) = (_chunks(n)[0] for n in names)
    rows = [(a, 0, n) for a, n in DATA["symbols"]] + [
        (mc_at, 0, "__start_mcount_loc"), (mc_at + len(mc), 0, "__stop_mcount_loc"),
        (jt_at, 0, "__start___jump_table"), (jt_at + len(jt), 0, "__stop___jump_table"),
        (sc_at, 0, "__start_static_call_sites"), (sc_at + len(sc), 0, "__stop_static_call_sites")]

    def read(addr: int, n: int) -> bytes:
        return memory[addr][:n]

    t = build_tables(rows, read)
    assert t.counts() == {"mcount_loc": len(mc) // 8, "jump_table": len(jt) // 16,
                          "static_call_sites": len(sc) // 8, "static_call_tramps": 5}
    assert t.ftrace_text[0][2] == "ftrace_caller" and t.init == (SYMS["__init_begin"], SYMS["__init_end"])
    assert set(t.jump.values()) <= set(t.keys)  # static keys named from data symbols
    assert build_tables([], read) == KernelTables(static_call_text=None)


def test_static_call_forms_on_real_trampolines() -> None:
    r0, thunk = SYMS["__static_call_return0"], SYMS["__x86_return_thunk"]
    forms = {n: static_call_form(bytes.fromhex(h), SYMS[n], r0, thunk)
             for n, h in DATA["tramp_bytes"].items()}
    # as built, before boot sets the mode: cond_resched is DEFINE_STATIC_CALL_RET0 (jmp
    # __static_call_return0), preempt_schedule points at its thunk
    assert forms["__SCT__cond_resched"] == ("ret0", r0)
    assert forms["__SCT__preempt_schedule"][0] == "func"
    site = 0xFFFFFFFF816CCB53
    assert static_call_form(bytes.fromhex("2e2e2e31c0"), site, r0, thunk) == ("ret0", r0)
    assert static_call_form(bytes.fromhex("0f1f440000"), site, r0, thunk) == ("null", None)
    assert static_call_form(bytes.fromhex("c3cccccccc"), site, r0, thunk) == ("null", None)
    jmp_thunk = b"\xe9" + (thunk - site - 5).to_bytes(4, "little", signed=True)
    assert static_call_form(jmp_thunk, site, r0, thunk) == ("null", thunk)
    assert static_call_form(bytes.fromhex("cccccccccc"), site, r0, thunk) == ("other", None)


def test_static_call_sites_leave_out_init_text() -> None:
    t = tables()
    sites = static_call_sites(t, "cond_resched")
    assert int(next(r["site"] for r in DATA["traps"] if r.get("user_key") == "cond_resched"), 16) in sites
    init_site = SYMS["__init_begin"] + 0x10
    key = next(a for a, n in t.keys.items() if n == "cond_resched")
    t2 = KernelTables(t.mcount, t.jump, {**t.static_call, init_site: key}, t.tramps, t.keys, t.ftrace_text,
                      t.static_call_text, t.init)
    assert init_site not in static_call_sites(t2, "cond_resched")
    assert init_site in static_call_sites(t2, "cond_resched", init=True)


def test_count_users_on_captured_records() -> None:
    counts = census.count_users(DATA["traps"])
    assert list(counts) == ["ftrace", "static_call", "jump_label"]  # USERS order
    assert sum(counts.values()) == len(DATA["traps"])
    total: dict[str, int] = {}
    census.add_counts(total, counts)
    census.add_counts(total, {"ftrace": 1, "bad": "x"})
    assert total["ftrace"] == counts["ftrace"] + 1 and "bad" not in total


def test_the_newest_region_wins_where_regions_overlap() -> None:
    """BPF text freed and allocated again at an overlapping address: the new program owns the overlap;
    the rest of the old one still attributes the traps seen there before."""
    c = Census(KernelTables())
    c.add_region(0xFFFFFFFFC0000700, 0x40, "bpf", "bpf_prog_a_old")
    c.add_region(0xFFFFFFFFC0000800, 0x40, "bpf", "bpf_prog_b")
    c.add_region(0xFFFFFFFFC0000720, 0x40, "bpf", "bpf_prog_a_new")
    assert c.site_user(0xFFFFFFFFC0000730).key == "bpf_prog_a_new"
    assert c.site_user(0xFFFFFFFFC0000705).key == "bpf_prog_a_old"
    assert c.site_user(0xFFFFFFFFC0000805).key == "bpf_prog_b"
