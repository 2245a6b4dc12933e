"""Exceptions shared by every restune package.

Validation collects every problem it finds and raises once, so a user fixes a
config in one round trip instead of one error at a time.
"""
from __future__ import annotations

from collections.abc import Iterable


class RestuneError(Exception):
    """Base class for errors a user can act on (bad input, bad config)."""


class ConfigError(RestuneError, ValueError):
    """One or more invalid settings; `problems` lists each of them."""

    def __init__(self, problems: Iterable[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class InputError(RestuneError, ValueError):
    """A tensor or image handed to the model does not fit it."""


def choices(values: Iterable[object]) -> str:
    return ", ".join(repr(v) for v in values)
