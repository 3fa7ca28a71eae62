"""Message rendering: the Liquid environment shared by validation, plans and delivery."""

from __future__ import annotations

from functools import lru_cache

from liquid import BoundTemplate, Environment
from liquid.exceptions import LiquidError

TEMPLATE_ROOTS = ("user", "event", "campaign", "linked")


class TemplateError(ValueError):
    """A template that does not parse."""


@lru_cache(maxsize=1)
def environment() -> Environment:
    """No loader is configured, so templates cannot include or render files."""
    return Environment()


@lru_cache(maxsize=4096)
def compile_template(source: str) -> BoundTemplate:
    try:
        return environment().from_string(source)
    except LiquidError as exc:
        raise TemplateError(str(exc)) from exc


def referenced_paths(source: str) -> set[str]:
    """Dotted variable paths the template reads from outside itself, e.g. {'user.first_name'}."""
    template = compile_template(source)
    return set(template.global_variable_paths())
