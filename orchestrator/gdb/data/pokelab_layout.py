"""Which text_poke machinery this kernel has: runs inside GDB's own Python (stdlib only).

``_detect()`` finds, by presence in the vmlinux's symbols and DWARF (never by
version), the int3 handler, ``struct text_poke_loc``, the patch descriptor and
``struct pt_regs``; ``_reader(info)`` gives the descriptor reader for that
kernel generation (``_BpDescReader``: 6.0 .. 6.15, ``_TextPokeArrayReader``: 6.16+).
"""

import gdb  # type: ignore[import-not-found]

from pokelab_access import _emit, _fields, _read, _reg, _sym_addr, _type, _u

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

    def cpu(self, thread):
        return thread - 1, None

    def read(self, cpu):
        desc = _read(self.info["desc_addr"], self.size)
        return {"vec": _u(desc, *self.fields["vec"]),
                "nr_entries": _u(desc, *self.fields["nr_entries"], signed=True),
                "refs": _u(desc, *self.fields["refs"], signed=True)}

    def batch_vector(self):
        """At ``text_poke_bp_batch(struct text_poke_loc *tp, unsigned int nr_entries)``."""
        return _reg("rdi"), _reg("rsi") & 0xFFFFFFFF


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

    def cpu(self, thread):
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
            gs = _reg("gs_base")
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

    def batch_vector(self):
        """At ``smp_text_poke_batch_finish(void)``: the global array as it stands."""
        return self.vec, _u(_read(self.nr, self.nr_size), 0, self.nr_size, signed=True)


def _reader(info):
    return _TextPokeArrayReader(info) if info.get("vec_inline") else _BpDescReader(info)

