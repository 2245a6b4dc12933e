"""Errors of the tuner store; every one is a `RestuneError`, so the CLI prints it as one line.

The server maps them onto HTTP statuses: ArtifactError -> 400, NotFoundError -> 404,
ConflictError -> 409, StoreFullError -> 507, StoreUnavailableError -> 503.
"""
from __future__ import annotations

from collections.abc import Iterable

from restuning.errors import RestuneError


class StoreError(RestuneError):
    """Something about the tuner store or a request to it is wrong."""


class ArtifactError(StoreError, ValueError):
    """A tuner artifact is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: Iterable[str] | str, *, name: str | None = None, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.name = name
        self.source = source  # where the bytes came from (a file path), when that helps the reader
        subject = f"invalid tuner artifact {name!r}" if name else "invalid tuner artifact"
        if source:
            subject += f" ({source})"
        super().__init__(f"{subject}: " + "; ".join(self.problems))


class NotFoundError(StoreError, LookupError):
    """No tuner (or no such version of it) in the store."""


class ConflictError(StoreError):
    """A write lost a race it could not resolve by retrying."""


class StoreResetError(StoreError):
    """The store cannot bring a consumer up to date by its changes: its log is behind the consumer's revision
    (e.g. a Redis without persistence restarted), no longer reaches it (trimmed), or the store's epoch changed
    (flushed or replaced).

    A consumer that sees this must resynchronise from revision 0 instead of resuming.
    """


class StoreUnavailableError(StoreError):
    """The store's backend (Redis, the file system) cannot be reached right now."""


class StoreFullError(StoreUnavailableError):
    """The store has no room for a write (a full disk, Redis at its maxmemory); nothing was written.

    Reads still work, and a write succeeds again once room is made."""
