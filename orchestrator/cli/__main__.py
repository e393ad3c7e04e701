"""``python -m orchestrator.cli``: the ``pokelab`` command without its entry point."""

import sys

from .app import main

sys.exit(main())
