"""pokelab's GDB-side recorder: runs inside GDB's own Python (stdlib only).

Loaded with ``source``; nothing happens until the host calls
``python pokelab_setup('<json>')``.  Then two kinds of internal breakpoints
record every stop in the kernel's text_poke int3 handler without a round trip
to the host:

* at the handler's first instruction: read ``struct pt_regs`` (its pointer is
  the first argument, ``%rdi``), the patch descriptor and the entry for
  ``regs->ip - 1``; optionally corrupt that entry (fault injection);
* at each of the handler's return instructions: read the same ``pt_regs``
  again, the word at the new ``sp`` and the return value; undo the
  corruption; write one ``POKELAB-TRAP {json}`` line to the host's record pipe
  (``orchestrator/gdb/channel.py``; GDB's console when there is none).

``stop()`` returns False, so GDB resumes at once and MI sees nothing of it.
A per-batch trap budget (``pokelab_budget.TrapBudget``) disarms the entry
breakpoint once a batch has had its share of traps and re-arms it at the
next batch (``_budget_batch`` / ``_budget_trap`` / ``_budget_exit`` /
``_budget_burst_end``).  The host (orchestrator/gdb/ledger.py) decodes and judges
the raw bytes; the recorder only records.  Stops are keyed by GDB thread (one per vCPU), so a stop on
another vCPU between entry and return is recorded in its own right.

This file is what the host sources: the entry points it calls (``pokelab_*``).
The rest lies beside it, imported through ``sys.path`` (GDB's Python has no
package for us): ``pokelab_access`` (the shared state, symbols, memory,
registers, the ``_Hook`` breakpoint), ``pokelab_layout`` (what this kernel
has, and its descriptor reader), ``pokelab_traps`` (the trap and batch hooks,
injection, the budget's arming), ``pokelab_poke`` (plain writes and what is in
flight), ``pokelab_budget`` (the trap budget's accounting).
"""

import json
import os
import sys
import time

import gdb  # type: ignore[import-not-found]

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # our siblings lie beside us
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pokelab_access import _CHANNEL, _STATE, _emit, _exit_points, _range_exits, _read, _sym_addr  # noqa: E402
from pokelab_budget import TrapBudget  # noqa: E402
from pokelab_layout import _detect, _reader  # noqa: E402
from pokelab_poke import _poke_arm, _poke_setup, pokelab_inflight  # noqa: E402,F401
from pokelab_traps import _Batch, _BatchEnd, _BurstEnd, _Entry, _Exit  # noqa: E402

#: where a burst of batches ends or a single poke starts (x86 alternative.c up to 6.15)
BURST_END_HOOKS = ("text_poke_finish", "text_poke_bp")


def pokelab_setup(args_json):
    """Detect, place the breakpoints, report.  Called by the host once."""
    args = json.loads(args_json)
    if args.get("channel_fd") is not None:
        _CHANNEL["fd"] = int(args["channel_fd"])
    for bp in _STATE.get("bps", []):
        bp.delete()
    info = _detect()
    _STATE.clear()
    _STATE.update({"info": info, "pending": {}, "corrupted": {}, "bps": [], "traps": 0,
                   "reader": None if info.get("unsupported") else _reader(info), "in_batch": 0,
                   "entries": 0, "others": 0, "lost": 0, "errors": 0, "eligible": 0,
                   "mode": args.get("inject"), "every": max(1, int(args.get("inject_every", 2))),
                   "stub": None, "t0": time.monotonic(),
                   "seq": 0, "windows": [], "batches": 0, "budget": None,
                   "entry_bps": [], "exit_bps": [], "batch_bps": [], "burst_bps": [], "stops": 0,
                   "poke_pending": {}, "poke_bps": [], "poke_exit_bps": [], "pokes": 0})
    if info.get("unsupported"):
        _emit("POKELAB-SETUP", info)
        return
    exits, tails, fstart, fend = _exit_points(info["handler_addr"])
    info["exits"] = exits
    info["tail_jumps"] = tails
    info["handler_range"] = [fstart, fend]
    if not exits:
        info["unsupported"] = "no return instruction found in %s" % info["handler"]
        _emit("POKELAB-SETUP", info)
        return
    for name in args.get("stub_candidates", ["ftrace_stub"]):
        addr = _sym_addr(name)
        if addr is not None:
            _STATE["stub"] = addr
            info["stub"] = [name, addr]
            break
    bptype = gdb.BP_HARDWARE_BREAKPOINT if args.get("hardware") else gdb.BP_BREAKPOINT
    if args.get("hardware") and len(exits) + 1 > 4:
        info["unsupported"] = "%d return points need more than 4 hardware breakpoints" % len(exits)
        _emit("POKELAB-SETUP", info)
        return
    _STATE["entry_bps"].append(_Entry("*0x%x" % info["handler_addr"], type=bptype, internal=True))
    for addr in exits:
        _STATE["exit_bps"].append(_Exit("*0x%x" % addr, type=bptype, internal=True))
    _STATE["bps"].extend(_STATE["entry_bps"] + _STATE["exit_bps"])
    batch = _sym_addr(info["batch"])
    if batch is not None and not args.get("hardware"):
        _STATE["batch_bp"] = _Batch("*0x%x" % batch, type=bptype, internal=True)
        _STATE["batch_bps"].append(_STATE["batch_bp"])
        _STATE["bps"].extend(_STATE["batch_bps"])
        info["batch_hook"] = batch
        if info.get("vec_inline"):
            ends = _range_exits(batch)
            for addr in ends:
                _STATE["bps"].append(_BatchEnd("*0x%x" % addr, type=bptype, internal=True))
            info["batch_exits"] = ends
    budget = args.get("budget")
    if budget and info.get("batch_hook"):
        # without a batch hook nothing would re-arm a disarmed entry: no budget then
        per_burst = budget.get("batches_per_burst")
        ends = [(n, _sym_addr(n)) for n in BURST_END_HOOKS]
        ends = [(n, a) for n, a in ends if a is not None]
        if per_burst and (not ends or not info.get("vec_max")):
            per_burst = None  # nothing would end a blind burst, or no way to tell a full batch
        for _name, addr in ends if per_burst else []:
            bp = _BurstEnd("*0x%x" % addr, type=bptype, internal=True)
            bp.enabled = False  # armed only while a burst is blind
            _STATE["burst_bps"].append(bp)
        _STATE["bps"].extend(_STATE["burst_bps"])
        info["burst_end_hooks"] = [n for n, _a in ends] if per_burst else []
        _STATE["budget"] = TrapBudget(budget.get("first"), budget.get("rate"), budget.get("burst"),
                                      per_burst)
    info["budget"] = _STATE["budget"].stats() if _STATE["budget"] else None
    _poke_setup(bptype)
    _emit("POKELAB-SETUP", info)


def pokelab_sync(n):
    """Write marker ``n`` behind every record written so far (the host waits for it)."""
    _emit("POKELAB-SYNC", {"n": int(n)})


def pokelab_stats():
    st = _STATE
    _emit("POKELAB-STATS", {k: st.get(k, 0) for k in ("entries", "traps", "others", "lost", "errors",
                                                        "eligible", "batches", "stops", "pokes")}
          | {"pending": len(st.get("pending", {})),
             "budget": st["budget"].stats() if st.get("budget") else None,
             "hook_ms": {k: {"stops": n, "ms": round(sec * 1000.0, 3)}
                         for k, (n, sec) in sorted(st.get("hook_s", {}).items())}})


def pokelab_batches(on):
    """Turn the batch recorder on or off (each batch is a full guest stop: a PREEMPT_DYNAMIC
    switch writes thousands of one-site batches).  The guest must be stopped."""
    bp = _STATE.get("batch_bp")
    if bp is not None:
        bp.enabled = bool(on)
    if not on and _STATE.get("budget") is not None:
        # nothing would re-arm a disarmed entry without the batch hook: the trap budget is off too
        _STATE["budget"] = None
        for b in _STATE["entry_bps"] + _STATE["exit_bps"]:
            b.enabled = True
        for b in _STATE["burst_bps"]:
            b.enabled = False
    _poke_arm()
    _emit("POKELAB-BATCHES", {"on": bool(on), "hook": bp is not None})


def pokelab_read(args_json):
    """Emit the bytes at each ``[addr, n]`` of a JSON list (the guest must be stopped); null if unreadable."""
    out = []
    for addr, n in json.loads(args_json):
        try:
            out.append(_read(int(addr), int(n)).hex())
        except gdb.MemoryError:
            out.append(None)
    _emit("POKELAB-READ", {"data": out})


def pokelab_ops():
    """Emit the registered ftrace_ops with their trampolines (the guest must be stopped)."""
    out = []
    try:
        ops = gdb.parse_and_eval("ftrace_ops_list")
        end = int(gdb.parse_and_eval("&ftrace_list_end"))
    except gdb.error as exc:
        _emit("POKELAB-OPS", {"error": str(exc), "ops": out})
        return
    for _ in range(256):
        addr = int(ops)
        if addr == 0 or addr == end:
            break
        o = ops.dereference()
        item = {"ops": addr & 0xFFFFFFFFFFFFFFFF,
                "func": int(o["func"].cast(gdb.lookup_type("unsigned long"))),
                "flags": int(o["flags"])}
        for field in ("trampoline", "trampoline_size"):
            try:
                item[field] = int(o[field])
            except gdb.error:
                item[field] = 0
        out.append(item)
        ops = o["next"]
    _emit("POKELAB-OPS", {"ops": out})


class _BenchStop(gdb.Breakpoint):
    """Records the time of each hit and resumes: the cost of a stop with no MI round trip."""

    def stop(self):
        st = _STATE.setdefault("bench", {"times": [], "n": 0})
        st["times"].append(time.monotonic())
        if len(st["times"]) >= st["n"]:
            self.enabled = False
            t = st["times"]
            _emit("POKELAB-BENCH", {"intervals_ms": [round((b - a) * 1000.0, 4)
                                                     for a, b in zip(t, t[1:])]})
        return False


def pokelab_bench_stops(addr, n, hardware=False):
    """Place a do-nothing Python breakpoint at ``addr`` for ``n`` hits (then it disables itself)."""
    _STATE["bench"] = {"times": [], "n": int(n)}
    bptype = gdb.BP_HARDWARE_BREAKPOINT if hardware else gdb.BP_BREAKPOINT
    _STATE.setdefault("bench_bps", []).append(_BenchStop("*0x%x" % addr, type=bptype, internal=True))

