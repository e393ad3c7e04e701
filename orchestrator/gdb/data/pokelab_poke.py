"""Writes outside an int3 batch, and what is in flight at a read-back: runs inside GDB's own Python.

Imported by ``pokelab_gdb.py`` (stdlib only).
"""

import time

import gdb  # type: ignore[import-not-found]

from pokelab_access import _STATE, KERNEL_MIN, _emit, _Hook, _range_exits, _read, _reg, _sym_addr

# -- writes outside an int3 batch, and what is in flight at a read-back --------------------
# The kernel writes text three ways after boot: the int3 batch (recorded by _Batch), and
# plain ``text_poke()`` / ``text_poke_copy()`` / ``text_poke_set()`` (kprobe arm, disarm and
# unoptimize; static_call / jump_label before the batch machinery).  All three plain ones
# (and text_poke_kgdb) go through ``static void *__text_poke(text_poke_f func, void *addr,
# const void *src, size_t len)`` (arch/x86/kernel/alternative.c since 6.1's aadd1b678ebe;
# the same name in 7.3); the batch also calls it for every write, so its breakpoint is
# armed only while no batch is in flight (disarmed at the batch's entry, re-armed at its
# return) and while the batch hook itself is armed.  text_poke_early() (boot, a module's
# own text before it runs) is not watched: it never writes a live site.

#: at most this many bytes of one plain write are reported (a site is at most 5)
POKE_DATA_MAX = 64


class _PokeEntry(_Hook):
    """At ``__text_poke(func, addr, src, len)``: report the write; keep it pending until it returns."""

    where = "poke"

    def run(self):
        _on_poke_entry()


class _PokeExit(_Hook):
    where = "poke-exit"

    def run(self):
        _STATE["poke_pending"].pop(gdb.selected_thread().num, None)
        _poke_arm()


class _PokeBatchEnd(_Hook):
    """At each return of ``text_poke_bp_batch`` (6.1 .. 6.15): the batch is no longer in flight."""

    where = "batch-end"

    def run(self):
        _STATE["poke_depth"] = 0
        _poke_arm()


def _poke_setup(bptype):
    """Place the plain-write hooks (disarmed until _poke_arm); add to info what was placed."""
    info = _STATE["info"]
    _STATE.update({"poke_pending": {}, "poke_depth": 0, "poke_bps": [], "poke_exit_bps": [],
                   "pokes": 0})
    addr = _sym_addr("__text_poke")
    batch = info.get("batch_hook")
    if addr is None or batch is None:
        info["poke_hook"] = None
        return
    memset = _sym_addr("text_poke_memset")
    _STATE["poke_memset"] = memset
    exits = _range_exits(addr)
    if not exits:
        info["poke_hook"] = None
        return
    _STATE["poke_bps"].append(_PokeEntry("*0x%x" % addr, type=bptype, internal=True))
    for a in exits:
        _STATE["poke_exit_bps"].append(_PokeExit("*0x%x" % a, type=bptype, internal=True))
    if not info.get("batch_exits"):  # 6.1 .. 6.15: text_poke_bp_batch's own returns
        ends = _range_exits(batch)
        for a in ends:
            _STATE["poke_exit_bps"].append(_PokeBatchEnd("*0x%x" % a, type=bptype, internal=True))
        info["poke_batch_exits"] = ends
    for bp in _STATE["poke_bps"] + _STATE["poke_exit_bps"]:
        bp.enabled = False
    _STATE["bps"].extend(_STATE["poke_bps"] + _STATE["poke_exit_bps"])
    info["poke_hook"] = addr
    info["poke_exits"] = exits
    _poke_arm()


def _poke_in_batch():
    if _STATE["info"].get("batch_exits"):
        return _STATE.get("in_batch", 0) > 0
    return _STATE.get("poke_depth", 0) > 0


def _poke_arm():
    """Arm the plain-write hook iff the batch hook is armed and no batch is in flight."""
    if not _STATE.get("poke_bps"):
        return
    bp = _STATE.get("batch_bp")
    on = bp is not None and bp.enabled and not _poke_in_batch()
    for b in _STATE["poke_bps"]:
        if b.enabled != on:
            b.enabled = on
    ret = bool(_STATE["poke_pending"])
    for b in _STATE["poke_exit_bps"]:
        want = ret if isinstance(b, _PokeExit) else (bp is not None and bp.enabled)
        if b.enabled != want:
            b.enabled = want


def _poke_batch_entry(vec, nr):
    """At a batch's entry: no plain write is watched until it returns."""
    if _STATE.get("poke_bps") and not _STATE["info"].get("batch_exits"):
        # bp_desc is set a few instructions later: until then its vec may be a stale stack address
        _STATE["poke_batch"] = (vec, nr)
        _STATE["poke_depth"] = 1  # batches never nest (text_mutex): a missed return cannot stick
    _poke_arm()


def _on_poke_entry():
    func, addr, src, n = (_reg(r) for r in ("rdi", "rsi", "rdx", "rcx"))
    if _poke_in_batch():  # armed late: the batch's own write, recorded by its vector
        return
    _STATE["pokes"] += 1
    k = min(n, POKE_DATA_MAX)
    if func == _STATE.get("poke_memset"):
        data = _read(src, 1) * k
    else:
        data = _read(src, k) if k else b""
    _STATE["poke_pending"][gdb.selected_thread().num] = [addr, n]
    _emit("POKELAB-POKE", {"addr": addr, "len": n, "data": data.hex(),
                           "t": round(time.monotonic() - _STATE["t0"], 6)})
    _poke_arm()


def pokelab_inflight():
    """Emit what may be half-written now (guest stopped): the live descriptor's vector if a
    batch is in flight, and plain writes entered but not returned."""
    st = _STATE
    info = st.get("info") or {}
    out = {"live": False, "pending": list(st.get("poke_pending", {}).values())}
    reader = st.get("reader")
    if reader is None:
        _emit("POKELAB-INFLIGHT", out)
        return
    try:
        if info.get("vec_inline"):
            ncpu = max(1, len(gdb.selected_inferior().threads()))
            refs = [reader.read(c)["refs"] for c in range(ncpu)]
            desc = reader.read(0)
            live = any(refs) or st.get("in_batch", 0) > 0
            out["refs"] = refs
        else:
            desc = reader.read(0)
            live = desc["refs"] != 0 or st.get("poke_depth", 0) > 0
            if st.get("poke_depth", 0) > 0 and st.get("poke_batch"):
                desc["vec"], desc["nr_entries"] = st["poke_batch"]
            out["refs"] = [desc["refs"]]
        out["in_batch"] = st.get("in_batch", 0) if info.get("batch_exits") else st.get("poke_depth", 0)
        nr = desc["nr_entries"]
        if live and 0 < nr <= 65536 and desc["vec"] >= KERNEL_MIN:
            out["live"] = True
            out["n"] = nr
            out["entries"] = _read(desc["vec"], nr * info["loc_size"]).hex()
    except (gdb.error, gdb.MemoryError) as exc:
        out["error"] = str(exc)
    _emit("POKELAB-INFLIGHT", out)
