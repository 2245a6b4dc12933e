"""Errors of the training package; both are `RestuneError`s, so the CLI prints them as one line (exit 2)."""
from __future__ import annotations

from restuning.errors import ConfigError


class DataError(ConfigError):
    """The training data cannot be used as given (missing, empty, one class, bad CSV); lists every problem."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be resumed (missing, damaged, or written by a different run); lists every problem."""
