"""GDB: the MI session (pygdbmi), the probe that drives the in-GDB recorder (``data/pokelab_gdb.py``),
the ledger of what the recorder reports, the read-back of patched sites, kernel symbols and the census
tables read from the vmlinux.  Imports core and host only.
"""
