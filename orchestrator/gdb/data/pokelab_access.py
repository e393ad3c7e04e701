"""The recorder's access to GDB and the guest: runs inside GDB's own Python (stdlib only).

Imported by the other ``pokelab_*`` modules beside it (``pokelab_gdb.py`` puts
this directory on ``sys.path``).  Holds the recorder's one shared state
(``_STATE``, filled by ``pokelab_setup``), symbol and type lookups, guest memory
and register reads, the search for a function's return instructions, and
``_Hook``: the internal breakpoint that records and resumes.
"""

import json
import os
import time

import gdb  # type: ignore[import-not-found]

_STATE = {}
KERNEL_MIN = 0xFFFF800000000000
RET_THUNKS = ("__x86_return_thunk", "__ret", "retbleed_return_thunk", "srso_return_thunk")


#: what the breakpoint stops record: written to the host's record channel when it gave one
#: (``orchestrator/gdb/channel.py``: GDB's console stream costs a system call per byte)
RECORDS = frozenset(("POKELAB-TRAP", "POKELAB-BATCH", "POKELAB-OTHER", "POKELAB-POKE", "POKELAB-BLIND",
                     "POKELAB-CPU", "POKELAB-ERROR", "POKELAB-SYNC"))
#: the channel's file descriptor (inherited from the host), kept across ``pokelab_setup`` calls
_CHANNEL = {"fd": None}


def _emit(tag, obj):
    line = "%s %s\n" % (tag, json.dumps(obj, separators=(",", ":")))
    fd = _CHANNEL["fd"]
    if fd is not None and tag in RECORDS:
        data = line.encode()
        try:
            while data:
                data = data[os.write(fd, data):]
            return
        except OSError:  # the host is gone: say it where it may still be read
            _CHANNEL["fd"] = None
    gdb.write(line)


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


def _reg(name):
    """A register of the stopped thread's innermost frame, from the registers GDB read at the stop.

    Not ``gdb.newest_frame().read_register()``: a Python frame object carries the frame's id,
    and computing it makes GDB read the guest's stack (a remote round trip) at every stop
    (trap_ms 4.5 -> 3.8 ms, interleaved A/B of 16 tracer switches, 6.1 cloud, QEMU 10.2.2).
    """
    return int(gdb.parse_and_eval("$" + name)) & 0xFFFFFFFFFFFFFFFF


class _Hook(gdb.Breakpoint):
    """An internal breakpoint whose ``stop()`` counts the stop, runs ``run()`` and resumes."""

    where = "?"

    def run(self):
        raise NotImplementedError

    def stop(self):
        t = time.monotonic()
        try:
            _STATE["stops"] += 1
            self.run()
        except Exception as exc:  # noqa: BLE001 - never let a recorder error stop the guest
            _STATE["errors"] += 1
            _emit("POKELAB-ERROR", {"where": self.where, "error": repr(exc)})
        # [stops, seconds in run()] per kind of stop: what our Python costs at each (POKELAB-STATS)
        spent = _STATE.setdefault("hook_s", {}).setdefault(self.where, [0, 0.0])
        spent[0] += 1
        spent[1] += time.monotonic() - t
        return False

