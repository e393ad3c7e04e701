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
  corruption; print one ``POKELAB-TRAP {json}`` console line.

``stop()`` returns False, so GDB resumes at once and MI sees only the console
line.  A per-batch trap budget (``pokelab_budget.TrapBudget``) disarms the
entry breakpoint once a batch has had its share of traps and re-arms it at the
next batch (``_budget_batch`` / ``_budget_trap`` / ``_budget_exit`` /
``_budget_burst_end``).  The host (orchestrator/gdb/probe.py) decodes and judges
the raw bytes; this file only records.  Stops are keyed by GDB thread (one per vCPU), so a stop on
another vCPU between entry and return is recorded in its own right.
"""

import json
import os
import sys
import time

import gdb  # type: ignore[import-not-found]

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # pokelab_budget.py lies beside us
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pokelab_budget import TrapBudget  # noqa: E402

_STATE = {}
KERNEL_MIN = 0xFFFF800000000000
#: where a burst of batches ends or a single poke starts (x86 alternative.c up to 6.15)
BURST_END_HOOKS = ("text_poke_finish", "text_poke_bp")
RET_THUNKS = ("__x86_return_thunk", "__ret", "retbleed_return_thunk", "srso_return_thunk")


def _emit(tag, obj):
    gdb.write("%s %s\n" % (tag, json.dumps(obj, separators=(",", ":"))))


def _sym_addr(name):
    for lookup in (gdb.lookup_global_symbol, gdb.lookup_static_symbol):
        try:
            sym = lookup(name)
        except gdb.error:
            sym = None
        if sym is not None:
            try:
                return int(sym.value().address) & 0xFFFFFFFFFFFFFFFF
            except gdb.error:
                pass
    try:
        v = gdb.parse_and_eval("&'%s'" % name)
        return int(v.cast(gdb.lookup_type("unsigned long"))) & 0xFFFFFFFFFFFFFFFF
    except gdb.error:
        return None


def _type(name):
    try:
        return gdb.lookup_type(name)
    except gdb.error:
        return None


def _fields(t, base=0):
    """{name: [offset, size]}, looking into anonymous unions/structs (6.12's pt_regs cs/ss)."""
    out = {}
    for f in t.strip_typedefs().fields():
        if f.bitpos is None or f.bitsize:
            continue
        ft = f.type.strip_typedefs()
        off = base + f.bitpos // 8
        if not f.name and ft.code in (gdb.TYPE_CODE_UNION, gdb.TYPE_CODE_STRUCT):
            for name, val in _fields(ft, off).items():
                out.setdefault(name, val)
        elif f.name:
            out[f.name] = [off, ft.sizeof]
    return out


def _detect():
    """Names and layouts, by presence in the vmlinux (never by version)."""
    info = {"unsupported": None}
    handler = None
    # smp_text_poke_int3_handler: 6.16+ (5236b6a0fe92 renamed poke_int3_handler)
    for name in ("smp_text_poke_int3_handler", "poke_int3_handler"):
        addr = _sym_addr(name)
        if addr is not None:
            handler = (name, addr)
            break
    if handler is None:
        info["unsupported"] = "no text_poke int3 handler symbol (poke_int3_handler)"
        return info
    info["handler"], info["handler_addr"] = handler
    # struct smp_text_poke_loc: 6.16+ (a81d43c46e6e renamed struct text_poke_loc; same layout)
    loc_t = _type("struct smp_text_poke_loc") or _type("struct text_poke_loc")
    if loc_t is None:
        info["unsupported"] = "no struct text_poke_loc in the debug info"
        return info
    info["loc_type"] = str(loc_t)
    info["loc_size"] = loc_t.sizeof
    info["loc_fields"] = _fields(loc_t)
    why = _detect_descriptor(info)
    if why:
        info["unsupported"] = why
        return info
    regs_t = _type("struct pt_regs")
    if regs_t is None:
        info["unsupported"] = "no struct pt_regs in the debug info"
        return info
    info["regs_size"] = regs_t.sizeof
    info["regs_fields"] = _fields(regs_t)
    info["stext"] = _sym_addr("_stext")
    return info


# ---------------------------------------------------------------- descriptor readers
# One reader per descriptor layout, chosen by what the vmlinux's DWARF holds
# (never by version).  Each gives, for the trapping CPU, ``vec`` (address of the
# first struct text_poke_loc), ``nr_entries`` and ``refs``, and says where a batch
# starts and how to find its vector there.


def _array_bound(t):
    """Number of elements of a C array type (``vec[TEXT_POKE_ARRAY_MAX]``), or None."""
    t = t.strip_typedefs()
    if t.code != gdb.TYPE_CODE_ARRAY:
        return None
    lo, hi = t.range()
    return hi - lo + 1


def _detect_descriptor(info):
    """Fill ``info`` with the descriptor layout; return why it is unsupported, or None.

    * ``text_poke_array`` (6.16+): ``static struct smp_text_poke_array {
      struct smp_text_poke_loc vec[TEXT_POKE_ARRAY_MAX]; int nr_entries; }`` with
      ``DEFINE_PER_CPU(atomic_t, text_poke_array_refs)``.  The struct came with
      6e7dc03aeeb5 ("Introduce 'struct smp_text_poke_array' and move tp_vec and
      tp_vec_nr to it") and 0494b16b9cae ("Remove the tp_vec indirection"): vec is an
      inline array, not a pointer; the per-CPU refs came with 4334336e769b ("Improve
      code-patching scalability by removing false sharing in poke_int3_handler()",
      as ``bp_refs``), renamed by 28fb79092d9f; all in Ingo Molnar's 2025
      x86/alternatives series, merged for 6.16.  Field order changed inside that
      series: offsets come from DWARF only.  The batch to record is
      ``smp_text_poke_batch_finish(void)`` (e8d7b8c2bbcd renamed text_poke_finish;
      23a76739d6af folded smp_text_poke_batch_process() into it): it takes no
      arguments, so the recorder reads the global array at its entry.
    * ``bp_desc`` (6.0 .. 6.15): ``static struct bp_patching_desc { struct
      text_poke_loc *vec; int nr_entries; atomic_t refs; }`` (a static struct since
      efd608fa7403 in 6.0; a pointer to an on-stack descriptor before, unsupported).
    """
    if _sym_addr("text_poke_array") is not None:
        sym = gdb.lookup_static_symbol("text_poke_array") or gdb.lookup_global_symbol("text_poke_array")
        t = sym.type.strip_typedefs() if sym is not None else None
        if t is None or t.code != gdb.TYPE_CODE_STRUCT:
            return "text_poke_array is not a struct"
        fields = _fields(t)
        for need in ("vec", "nr_entries"):
            if need not in fields:
                return "text_poke_array has no field %s" % need
        vec_field = [f for f in t.fields() if f.name == "vec"][0]
        bound = _array_bound(vec_field.type)
        if bound is None:
            return "text_poke_array.vec is not an inline array (expected since 0494b16b9cae)"
        refs = _sym_addr("text_poke_array_refs")
        pco = _sym_addr("__per_cpu_offset")
        if refs is None or pco is None:
            return "text_poke_array without the per-CPU text_poke_array_refs / __per_cpu_offset"
        info.update({"desc": "text_poke_array", "desc_addr": _sym_addr("text_poke_array"),
                     "desc_fields": fields, "vec_inline": True, "vec_max": bound,
                     "refs_percpu": "text_poke_array_refs", "refs_percpu_addr": refs,
                     "per_cpu_offset": pco, "cpu_number_addr": _cpu_number_addr(),
                     "batch": "smp_text_poke_batch_finish"})
        return None
    if _sym_addr("bp_desc") is not None:
        sym = gdb.lookup_static_symbol("bp_desc")
        t = sym.type if sym is not None else None
        if t is None or t.strip_typedefs().code != gdb.TYPE_CODE_STRUCT:
            return "bp_desc is not a struct (pre-6.0 pointer layout)"
        fields = _fields(t)
        for need in ("vec", "nr_entries", "refs"):
            if need not in fields:
                return "bp_desc has no field %s" % need
        info.update({"desc": "bp_desc", "desc_addr": _sym_addr("bp_desc"), "desc_fields": fields,
                     "vec_inline": False, "batch": "text_poke_bp_batch"})
        # tp_vec[TP_VEC_MAX] (6.1 .. 6.15) is what text_poke_queue() fills
        tp_vec = gdb.lookup_static_symbol("tp_vec")
        if tp_vec is not None:
            info["vec_max"] = _array_bound(tp_vec.type)
        return None
    return "no patch descriptor (bp_desc or text_poke_array)"


def _cpu_number_addr():
    """Address of the per-CPU ``int cpu_number`` (or ``pcpu_hot.cpu_number``, 6.2 .. 6.14), or None."""
    addr = _sym_addr("cpu_number")
    if addr is not None:
        return addr
    hot = _sym_addr("pcpu_hot")
    t = _type("struct pcpu_hot")
    if hot is not None and t is not None:
        f = _fields(t).get("cpu_number")
        if f is not None:
            return hot + f[0]
    return None


class _BpDescReader:
    """6.0 .. 6.15: ``bp_desc`` (one struct; vec is a pointer; refs a field)."""

    def __init__(self, info):
        self.info = info
        self.fields = info["desc_fields"]
        self.size = max(o + s for o, s in self.fields.values())

    def cpu(self, thread, frame):
        return thread - 1, None

    def read(self, cpu):
        desc = _read(self.info["desc_addr"], self.size)
        return {"vec": _u(desc, *self.fields["vec"]),
                "nr_entries": _u(desc, *self.fields["nr_entries"], signed=True),
                "refs": _u(desc, *self.fields["refs"], signed=True)}

    def batch_vector(self, frame):
        """At ``text_poke_bp_batch(struct text_poke_loc *tp, unsigned int nr_entries)``."""
        return _reg(frame, "rdi"), _reg(frame, "rsi") & 0xFFFFFFFF


class _TextPokeArrayReader:
    """6.16+: ``text_poke_array`` (vec inline) and the trapping CPU's ``text_poke_array_refs``.

    The CPU is the GDB thread's vCPU index (QEMU numbers threads from 1 in
    cpu_index order), checked once per thread: the per-CPU ``cpu_number`` at
    ``__per_cpu_offset[vcpu]`` must read ``vcpu``, and in the handler (kernel
    mode) ``gs_base`` must equal ``__per_cpu_offset[vcpu]`` (what ``this_cpu_ptr``
    adds).  If they disagree, the CPU whose offset is ``gs_base`` is used and the
    record says so.
    """

    def __init__(self, info):
        self.info = info
        self.fields = info["desc_fields"]
        self.vec = info["desc_addr"] + self.fields["vec"][0]
        self.nr = info["desc_addr"] + self.fields["nr_entries"][0]
        self.nr_size = self.fields["nr_entries"][1]
        self.offsets = {}
        self.cpus = {}

    def _offset(self, cpu):
        off = self.offsets.get(cpu)
        if off is None:
            off = _u(_read(self.info["per_cpu_offset"] + 8 * cpu, 8), 0, 8)
            self.offsets[cpu] = off
        return off

    def cpu(self, thread, frame):
        """(Linux CPU number, None) or (cpu, 'why the mapping was corrected')."""
        got = self.cpus.get(thread)
        if got is not None:
            return got
        vcpu, note = thread - 1, None
        off = self._offset(vcpu)
        cn = self.info.get("cpu_number_addr")
        if cn is not None:
            n = _u(_read((off + cn) & 0xFFFFFFFFFFFFFFFF, 4), 0, 4, signed=True)
            if n != vcpu:
                note = "cpu_number at __per_cpu_offset[%d] is %d" % (vcpu, n)
        try:
            gs = _reg(frame, "gs_base")
        except (gdb.error, ValueError):
            gs = None
        if gs is not None and gs != off:
            for c in range(64):
                if self._offset(c) == gs:
                    note = "gs_base is __per_cpu_offset[%d], not [%d]" % (c, vcpu)
                    vcpu = c
                    break
        self.cpus[thread] = (vcpu, note)
        _emit("POKELAB-CPU", {"thread": thread, "cpu": vcpu, "per_cpu_offset": off,
                              "gs_base": gs, "note": note})
        return vcpu, note

    def read(self, cpu):
        refs_addr = (self._offset(cpu) + self.info["refs_percpu_addr"]) & 0xFFFFFFFFFFFFFFFF
        return {"vec": self.vec,
                "nr_entries": _u(_read(self.nr, self.nr_size), 0, self.nr_size, signed=True),
                "refs": _u(_read(refs_addr, 4), 0, 4, signed=True)}

    def batch_vector(self, frame):
        """At ``smp_text_poke_batch_finish(void)``: the global array as it stands."""
        return self.vec, _u(_read(self.nr, self.nr_size), 0, self.nr_size, signed=True)


def _range_exits(start):
    """Return instructions (``ret``, ``jmp`` to a return thunk) in the address range holding ``start``.

    Parses GDB's ``disassemble``, which knows a function's ranges: a block's
    start..end can span megabytes when the function has a ``.cold`` part.
    """
    out = gdb.execute("disassemble 0x%x" % start, to_string=True)
    exits, inside = [], True  # no "Address range" header: one contiguous range
    for line in out.splitlines():
        if line.startswith("Address range"):
            lo, hi = [int(w.rstrip(":"), 16) for w in line.split() if w.startswith("0x")][:2]
            inside = lo <= start < hi
            continue
        if not inside or "\t" not in line:
            continue
        addr_part, asm = line.split("\t", 1)
        words = addr_part.split()
        addr = int(words[1] if words[0] == "=>" else words[0], 16)
        op = asm.split()[0] if asm.split() else ""
        if op.startswith("ret") or (op.startswith("jmp") and any("<%s>" % t in asm for t in RET_THUNKS)):
            exits.append(addr)
    return exits


def _reader(info):
    return _TextPokeArrayReader(info) if info.get("vec_inline") else _BpDescReader(info)


class _BatchEnd(gdb.Breakpoint):
    """At each return of ``smp_text_poke_batch_finish``: the batch is no longer in flight."""

    def stop(self):
        _STATE["in_batch"] = max(0, _STATE.get("in_batch", 0) - 1)
        _poke_arm()
        return False


def _exit_points(start):
    """Addresses of the handler's return instructions (ret, or jmp to a return thunk)."""
    block = gdb.block_for_pc(start)
    while block is not None and block.function is None:
        block = block.superblock
    if block is None:
        raise gdb.GdbError("no block for the handler")
    arch = gdb.selected_inferior().architecture()
    exits, tails = [], []
    for insn in arch.disassemble(block.start, block.end - 1):
        asm = insn["asm"]
        op = asm.split()[0] if asm.split() else ""
        if op.startswith("ret"):
            exits.append(insn["addr"])
        elif op.startswith("jmp") and "<" in asm:
            target = asm[asm.index("<") + 1:asm.index(">")]
            name = target.split("+")[0]
            if name in RET_THUNKS:
                exits.append(insn["addr"])
            elif name != block.function.name and not name.startswith(block.function.name):
                tails.append(asm)
    return exits, tails, block.start, block.end


def _u(b, off, size, signed=False):
    return int.from_bytes(b[off:off + size], "little", signed=signed)


def _read(addr, n):
    return gdb.selected_inferior().read_memory(addr, n).tobytes()


def _write(addr, data):
    gdb.selected_inferior().write_memory(addr, data)


def _reg(frame, name):
    return int(frame.read_register(name)) & 0xFFFFFFFFFFFFFFFF


class _Hook(gdb.Breakpoint):
    """An internal breakpoint whose ``stop()`` counts the stop, runs ``run()`` and resumes."""

    where = "?"

    def run(self):
        raise NotImplementedError

    def stop(self):
        try:
            _STATE["stops"] += 1
            self.run()
        except Exception as exc:  # noqa: BLE001 - never let a recorder error stop the guest
            _STATE["errors"] += 1
            _emit("POKELAB-ERROR", {"where": self.where, "error": repr(exc)})
        return False


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
        frame = gdb.newest_frame()
        vec, nr = _STATE["reader"].batch_vector(frame)
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
    frame = gdb.newest_frame()
    thread = gdb.selected_thread().num
    t_in = time.monotonic()
    regs_ptr = _reg(frame, "rdi")
    st["entries"] += 1
    st["seq"] += 1
    cpu, cpu_note = st["reader"].cpu(thread, frame)
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
    frame = gdb.newest_frame()
    rec["ret"] = _reg(frame, "rax") & 0xFFFFFFFF
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


def pokelab_setup(args_json):
    """Detect, place the breakpoints, report.  Called by the host once."""
    args = json.loads(args_json)
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


def pokelab_stats():
    st = _STATE
    _emit("POKELAB-STATS", {k: st.get(k, 0) for k in ("entries", "traps", "others", "lost", "errors",
                                                        "eligible", "batches", "stops", "pokes")}
          | {"pending": len(st.get("pending", {})),
             "budget": st["budget"].stats() if st.get("budget") else None})


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


class _PokeBatchEnd(gdb.Breakpoint):
    """At each return of ``text_poke_bp_batch`` (6.1 .. 6.15): the batch is no longer in flight."""

    def stop(self):
        _STATE["poke_depth"] = 0
        _poke_arm()
        return False


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
    frame = gdb.newest_frame()
    func, addr, src, n = (_reg(frame, r) for r in ("rdi", "rsi", "rdx", "rcx"))
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
