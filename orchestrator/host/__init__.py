"""The host: child processes (:mod:`.procs`), the cache and its locks, deadlines, pokelab's own apt,
build roots, the host's TSC.

Modules here start processes only through :mod:`orchestrator.host.procs`, with a
deadline, and import only :mod:`orchestrator.core`.
"""
