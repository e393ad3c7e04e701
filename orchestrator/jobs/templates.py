"""HTML pages from the Jinja2 templates in ``orchestrator/jobs/data/*.html.j2``: the one Jinja2 user.

Autoescape is on for every template: a value becomes text unless the template marks it
safe, so a crash title or a known issue's note cannot inject markup.  Undefined names are
errors (:class:`jinja2.StrictUndefined`), so a renamed summary key fails the unit tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jinja2


@functools.cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("orchestrator.jobs", "data"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def render(name: str, **context: Any) -> str:
    """The template ``orchestrator/jobs/data/<name>`` rendered with ``context``."""
    return _env().get_template(name).render(**context)


def macro(name: str, macro_name: str) -> Callable[..., str]:
    """A ``{% macro %}`` of template ``name`` as a function returning (escaped) markup."""
    fn: Callable[..., str] = getattr(_env().get_template(name).module, macro_name)
    return fn
