"""One probed run: prepare a kernel and VM, boot, attach the probe, run a scenario's steps, judge.

Imports everything below it (core, host, gdb, kernels, machine), nothing above (jobs, cli).
"""
