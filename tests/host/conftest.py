"""The ``host`` set: claims that need this host's cache (kernels fetched by ``make images``) or trees.

Run by ``make test`` (target ``host``, after ``images``) and ``tox -e host``; never by
``pytest tests/unit``, which needs nothing from the host.  A missing prerequisite that
``make images`` provides is a failure here, not a skip.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the CLI-subprocess helpers and the fake kernel pair are shared with tests/unit
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))

from orchestrator.host.cache import cache_dir
from orchestrator.kernels.catalog import Catalog
from orchestrator.kernels.debian import cached_spec
from orchestrator.kernels.images import KernelArtifacts, ensure_kernel


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.host)


def cached_kernel(kid: str) -> KernelArtifacts:
    """A catalog kernel from the cache; fails (never downloads) when ``make images`` did not fetch it."""
    cache = cache_dir()
    spec = cached_spec(Catalog.load().get(kid), cache)
    if spec is None:
        pytest.fail(f"kernel {kid} is not in the cache {cache} (run `make images`)")
    return ensure_kernel(spec, cache)


@pytest.fixture
def default_kernel_cached() -> KernelArtifacts:
    return cached_kernel(Catalog.load().default.id)


@pytest.fixture
def kernel_6_1() -> KernelArtifacts:
    return cached_kernel("6.1")


@pytest.fixture
def kernel_6_12() -> KernelArtifacts:
    return cached_kernel("6.12")
