"""``python -m orchestrator.cli``: the ``pokelab`` command without its entry point."""

import sys

from .commands import main

sys.exit(main())
