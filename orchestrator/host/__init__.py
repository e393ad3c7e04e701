"""The host side of pokelab: what runs on this machine for it (apt, QEMU builds).

Modules here start processes only through :mod:`orchestrator.procs`, with a
deadline, and never import the layers above them (probe, scenarios, CLI).
"""
