"""The trap and batch hooks, fault injection and the trap budget's glue: runs inside GDB's own Python.

At the int3 handler's entry (``_Entry``) and each of its returns (``_Exit``)
one trap is recorded (``POKELAB-TRAP``); at the batch function (``_Batch``)
every site the batch will write (``POKELAB-BATCH``).  A wrong-target,
skip-call or wrong-return injection corrupts the trap's entry (``_corrupt``)
and undoes it at the return.  The trap budget (``pokelab_budget.TrapBudget``)
arms and disarms these breakpoints (``_arm``).  Imported by ``pokelab_gdb.py``
(stdlib only).
"""

import time

import gdb  # type: ignore[import-not-found]

from pokelab_access import _STATE, KERNEL_MIN, _emit, _Hook, _read, _reg, _u, _write
from pokelab_poke import _poke_arm, _poke_batch_entry

class _BatchEnd(_Hook):
    """At each return of ``smp_text_poke_batch_finish``: the batch is no longer in flight."""

    where = "batch-end"

    def run(self):
        _STATE["in_batch"] = max(0, _STATE.get("in_batch", 0) - 1)
        _poke_arm()



class _Entry(_Hook):
    where = "entry"

    def run(self):
        _on_entry()


class _Exit(_Hook):
    where = "exit"

    def run(self):
        _on_exit()


class _BurstEnd(_Hook):
    """At ``text_poke_finish()`` / ``text_poke_bp()``: a burst of batches ends (or a single poke
    starts): the trap budget re-arms what it disarmed."""

    where = "burst-end"

    def run(self):
        _budget_burst_end()


class _Batch(_Hook):
    """At the batch (``text_poke_bp_batch(tp, nr)``; 6.16+ ``smp_text_poke_batch_finish()``).

    Records every site the batch will write.

    Traps only show the sites a CPU happened to hit; this gives the host what
    each patched site must hold when the batch is done, trapped on or not.
    """

    where = "batch"

    def run(self):
        vec, nr = _STATE["reader"].batch_vector()
        size = _STATE["info"]["loc_size"]
        if _STATE["info"].get("batch_exits"):  # only if its end is seen too
            _STATE["in_batch"] = _STATE.get("in_batch", 0) + 1
        _poke_batch_entry(vec, nr)
        _budget_batch(nr)
        if 0 < nr <= 65536 and vec >= KERNEL_MIN:
            _STATE["batches"] += 1
            blob = _read(vec, nr * size)
            rec = {"n": nr, "entries": blob.hex(), "vec_max": _STATE["info"].get("vec_max"),
                   "t": round(time.monotonic() - _STATE["t0"], 6)}
            if nr <= INT3_BEFORE_MAX:
                rec["int3_before"] = _int3_sites(blob, nr, size)
            _emit("POKELAB-BATCH", rec)


#: batches up to this size say which of their sites already hold an int3 (one read per site)
INT3_BEFORE_MAX = 64


def _int3_sites(blob, nr, size):
    """Sites (hex) of a batch whose first byte is an int3 before its first step: another owner's
    int3 (an armed kprobe that the optimizer now turns into a JMP32).  A trap there before the
    batch takes its refs is that owner's, not the batch's."""
    info = _STATE["info"]
    ra_off, ra_sz = info["loc_fields"]["rel_addr"]
    out = []
    for i in range(nr):
        site = (info["stext"] + _u(blob[i * size:(i + 1) * size], ra_off, ra_sz, True)) & 0xFFFFFFFFFFFFFFFF
        if _read(site, 1) == b"\xcc":
            out.append("%x" % site)
    return out


def _find_entry(info, vec, nr, site):
    """Binary search the sorted vector (reading 1 entry per probe); linear scan if that misses."""
    size = info["loc_size"]
    ra_off, ra_sz = info["loc_fields"]["rel_addr"]
    rel = (site - info["stext"]) & 0xFFFFFFFFFFFFFFFF
    rel = rel - (1 << 64) if rel >= (1 << 63) else rel
    if nr <= 64:
        blob = _read(vec, nr * size)
        for i in range(nr):
            e = blob[i * size:(i + 1) * size]
            if _u(e, ra_off, ra_sz, True) == rel:
                return i, e, "scan"
        return None, None, "scan"
    lo, hi = 0, nr - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        e = _read(vec + mid * size, size)
        r = _u(e, ra_off, ra_sz, True)
        if r == rel:
            return mid, e, "bsearch"
        if r < rel:
            lo = mid + 1
        else:
            hi = mid - 1
    # not found by bsearch: the 2025 bug class (unsorted vector) would hide it; look everywhere
    blob = _read(vec, nr * size)
    for i in range(nr):
        e = blob[i * size:(i + 1) * size]
        if _u(e, ra_off, ra_sz, True) == rel:
            return i, e, "unsorted"
    return None, None, "bsearch"


def _corrupt(info, entry, site, mode):
    """The corrupted bytes for ``entry`` under ``mode``, or None if the mode does not apply."""
    f = info["loc_fields"]
    op = entry[f["opcode"][0]]
    length = entry[f["len"][0]]
    data = bytearray(entry)
    d_off, d_sz = f["disp"]
    if op == 0xE9 and mode == "wrong-target":
        return _corrupt_jmp32(data, d_off, d_sz, length)
    if op != 0xE8:
        return None
    if mode == "wrong-target":
        stub = _STATE["stub"]
        written = site + length + _u(entry, d_off, d_sz, True)
        if stub is None or stub == written:
            return None
        disp = stub - (site + length)
        data[d_off:d_off + d_sz] = int(disp).to_bytes(d_sz, "little", signed=True)
    elif mode == "skip-call":
        data[f["opcode"][0]] = 0xE9
        data[d_off:d_off + d_sz] = (0).to_bytes(d_sz, "little", signed=True)
    else:
        return None
    return bytes(data)


def _corrupt_jmp32(data, d_off, d_sz, length):
    """wrong-target on a JMP32 (an optprobe detour, a jump label): jump back to the site itself.

    Its first byte is still the int3 until the batch's last step, so the CPU traps
    again (and runs the new JMP once it is written): no wrong code runs.  A NOP is
    queued as JMP32 +0 (judge.py): those are left alone.
    """
    if _u(bytes(data), d_off, d_sz, True) == 0:
        return None
    data[d_off:d_off + d_sz] = int(-length).to_bytes(d_sz, "little", signed=True)
    return bytes(data)


def _on_entry():
    st = _STATE
    info = st["info"]
    thread = gdb.selected_thread().num
    t_in = time.monotonic()
    regs_ptr = _reg("rdi")
    st["entries"] += 1
    st["seq"] += 1
    cpu, cpu_note = st["reader"].cpu(thread)
    rec = {"cpu": cpu, "regs_ptr": regs_ptr, "t": round(time.monotonic() - st["t0"], 6)}
    if cpu != thread - 1 or cpu_note:
        rec.update({"vcpu": thread - 1, "cpu_note": cpu_note})
    if regs_ptr < KERNEL_MIN:
        rec.update({"kind": "other", "why": "rdi is not a kernel pointer"})
        _emit("POKELAB-OTHER", rec)
        return
    rsz = info["regs_size"]
    pre = _read(regs_ptr, rsz)
    rec["desc"] = desc = st["reader"].read(cpu)
    vec, nr, refs = desc["vec"], desc["nr_entries"], desc["refs"]
    if info.get("batch_exits"):
        desc["in_batch"] = st.get("in_batch", 0) > 0
    vec_max = info.get("vec_max") or 65536
    if info.get("vec_max"):
        desc["vec_max"] = vec_max
    ip_off, ip_sz = info["regs_fields"]["ip"]
    sp_off, _ = info["regs_fields"]["sp"]
    ip = _u(pre, ip_off, ip_sz)
    # refs == 0 with entries queued is normal between add and finish; a trap then is
    # ours only while the batch runs (then it is judged: refs must be held)
    held = refs != 0 or desc.get("in_batch", False)
    if not held or vec == 0 or nr <= 0:
        rec.update({"kind": "other", "why": "no live descriptor", "ip": ip, "pre": pre.hex()})
        st["others"] += 1
        _emit("POKELAB-OTHER", rec)
        return
    site = (ip - 1) & 0xFFFFFFFFFFFFFFFF
    idx, entry, how = _find_entry(info, vec, min(nr, vec_max), site)  # the judge flags nr > vec_max
    rec.update({"pre": pre.hex(), "entry": entry.hex() if entry else None,
                "entry_index": idx, "lookup": how, "injected": None})
    sp = _u(pre, sp_off, 8)
    try:
        rec["pre_stack_word"] = _read(sp, 8).hex()
    except gdb.MemoryError:
        rec["pre_stack_word"] = None
    if entry is not None:
        addr = vec + idx * info["loc_size"]
        live = st["corrupted"].get(addr)
        if live is not None and live[1] == entry:
            rec["injected"] = live[2]
            rec["entry_orig"] = live[0].hex()
        elif st["mode"] in ("wrong-target", "skip-call"):
            st["eligible"] += 1
            if st["eligible"] % st["every"] == 0:
                bad = _corrupt(info, entry, site, st["mode"])
                if bad is not None:
                    _write(addr, bad)
                    st["corrupted"][addr] = (entry, bad, st["mode"])
                    st["windows"].append([addr, st["seq"], None, st["mode"]])
                    rec["injected"] = st["mode"]
                    rec["entry_orig"] = entry.hex()
                    rec["entry"] = bad.hex()
                    rec["restore"] = addr
        elif st["mode"] == "wrong-return" and entry[info["loc_fields"]["opcode"][0]] == 0xE8:
            st["eligible"] += 1
            if st["eligible"] % st["every"] == 0:
                rec["injected"] = "wrong-return"
    if thread in st["pending"]:
        st["lost"] += 1
    rec["_t_in"] = t_in
    rec["_seq"] = st["seq"]
    rec["_addr"] = vec + idx * info["loc_size"] if entry is not None else None
    st["pending"][thread] = rec
    _budget_trap()


def _on_exit():
    st = _STATE
    info = st["info"]
    thread = gdb.selected_thread().num
    rec = st["pending"].pop(thread, None)
    if rec is None:
        _budget_exit()
        return
    rec["ret"] = _reg("rax") & 0xFFFFFFFF
    regs_ptr = rec["regs_ptr"]
    sp_off, _ = info["regs_fields"]["sp"]
    if rec.get("injected") == "wrong-return" and "restore" not in rec:
        post = _read(regs_ptr, info["regs_size"])
        new_sp = _u(post, sp_off, 8)
        site = (_u(bytes.fromhex(rec["pre"]), info["regs_fields"]["ip"][0], 8) - 1)
        _write(new_sp, site.to_bytes(8, "little"))  # "return" into the site: it runs again
    post = _read(regs_ptr, info["regs_size"])
    new_sp = _u(post, sp_off, 8)
    rec["post"] = post.hex()
    try:
        rec["stack_word"] = _read(new_sp, 8).hex()
    except gdb.MemoryError:
        rec["stack_word"] = None
    st["seq"] += 1
    addr = rec.pop("restore", None)
    if addr is not None:
        orig, bad, _mode = st["corrupted"].pop(addr)
        if _read(addr, len(bad)) == bad:  # only if the slot was not reused by a new batch
            _write(addr, orig)
        for w in st["windows"]:
            if w[0] == addr and w[2] is None:
                w[2] = st["seq"]
    # Another vCPU may have corrupted this trap's entry after our entry stop and
    # before the handler read it: the trap then emulated a corrupted descriptor too.
    seq_in, my_addr = rec.pop("_seq"), rec.pop("_addr")
    if not rec.get("injected") and my_addr is not None:
        for w_addr, w_start, w_end, w_mode in st["windows"]:
            if w_addr == my_addr and w_start >= seq_in and (w_end is None or w_end >= seq_in):
                rec["injected"] = w_mode
                rec["injected_by"] = "another vcpu's injection during this trap"
                break
    if len(st["windows"]) > 64:
        st["windows"] = [w for w in st["windows"] if w[2] is None] + st["windows"][-32:]
    st["traps"] += 1
    # time from the entry stop's handling to the end of this one (excludes the first
    # stop's arrival and the last resume, which a bare stop pays too)
    rec["cost_ms"] = round((time.monotonic() - rec.pop("_t_in")) * 1000.0, 3)
    _emit("POKELAB-TRAP", rec)
    _budget_exit()


# -- the trap budget: one-line hooks from the batch, entry and exit stops ------------------


def _arm(entry, exits, batch=True):
    # the burst-end hooks are needed (and cost a stop each) only while the batch hook is off
    for bp in _STATE["burst_bps"]:
        if bp.enabled == batch:
            bp.enabled = not batch
    for bp in _STATE["batch_bps"]:
        if bp.enabled != batch:
            bp.enabled = batch
    for bp in _STATE["entry_bps"]:
        if bp.enabled != entry:
            bp.enabled = entry
    for bp in _STATE["exit_bps"]:
        if bp.enabled != exits:
            bp.enabled = exits
    _poke_arm()


def _budget_batch(nr):
    """At a batch: the budget decides whether the probe watches it (re-arms or leaves it)."""
    b = _STATE.get("budget")
    if b is None:
        return
    cap = _STATE["info"].get("vec_max")  # a full batch: as many entries as the vector holds
    watch = b.on_batch(time.monotonic(), full=cap is None or nr >= cap)
    # exits stay armed while a vCPU is between entry and return (its record is pending)
    _arm(watch, watch or bool(_STATE["pending"]), not b.blind)
    if b.blind:
        # the host must forget what it expects at patched sites: unseen batches rewrite them
        _emit("POKELAB-BLIND", {"batches": b.batches, "t": round(time.monotonic() - _STATE["t0"], 6)})


def _budget_burst_end():
    """At a burst's end (or a single poke's start): re-arm the batch hook, the entry and the returns."""
    b = _STATE.get("budget")
    if b is not None and b.on_burst_end(time.monotonic()):
        _arm(True, True, True)


def _budget_trap():
    """After a text_poke trap's entry was recorded: disarm the entry when the batch's share is spent."""
    b = _STATE.get("budget")
    if b is not None and b.on_trap(time.monotonic()):
        _arm(False, True, not b.blind)


def _budget_exit():
    """After a return stop: once the entry is disarmed and no record is pending, disarm the returns."""
    b = _STATE.get("budget")
    if b is not None and not b.armed and not _STATE["pending"]:
        _arm(False, False, not b.blind)

