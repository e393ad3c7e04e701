"""Scenario tests: options and fixtures come from the pokelab pytest plugin."""

pytest_plugins = ["orchestrator.jobs.pytest_plugin"]
