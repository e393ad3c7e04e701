"""``python -m orchestrator.cli``: the ``pokelab`` command without its entry point."""

from .app import main

raise SystemExit(main())
