"""The ``pokelab`` command line: parse, call a job, render, exit."""

from .app import main as main
