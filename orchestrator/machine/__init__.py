"""The machine: the QEMU binary (its choice: qemu_binary; its build: qemu_build), its argv, the VM and
its console, QMP and SSH.

Imports core, host, and gdb's MI session only to measure a QEMU's gdbstub
(:func:`orchestrator.machine.qemu_binary.measure_flushes`).
"""
