"""The ``pokelab`` command line: parse, call a job, render, exit."""

from .commands import main

__all__ = ["main"]
