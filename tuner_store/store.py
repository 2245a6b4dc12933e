"""The TunerStore interface: immutable, numbered versions of tuner artifacts plus an ordered change log.

Every change (a put that stored a new version, a delete) gets the next revision number, 1, 2, 3, …
A consumer remembers the last revision it applied and asks for everything after it, so a replica
that reconnects after any pause misses nothing. Backends: `file_store` (a directory shared by the
processes of one machine) and `redis_store` (shared by replicas).

The change log keeps the last `log_keep` revisions (at least; DEFAULT_LOG_KEEP), so it does not grow with
the store's age. A store also has an epoch: a random id set when its first change is written. A consumer
remembers the epoch with its revision; a different epoch means the store was flushed or replaced (its
revisions started again and may already have passed the consumer's). Either way, a consumer whose revision
the log no longer reaches, or whose epoch is not the store's, gets StoreResetError and reads everything
again instead of silently missing changes.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from restuning.checks import is_positive_int
from tuner_store.artifact import (
    DEFAULT_MAX_ARTIFACT_BYTES,
    NAME_RULE,
    TunerArtifact,
    _encode,
    config_from_header,
    decode_artifact,
    is_valid_name,
    parse_header,
)
from tuner_store.errors import ArtifactError, NotFoundError, StoreResetError
from tuner_store.records import ChangeEvent, TunerRecord

# Revisions the change log keeps (at least): a watcher that falls further behind than this reads the whole
# catalog again, which is always correct and costs one listing. 10,000 entries are about 2 MB.
DEFAULT_LOG_KEEP = 10_000


ANY_EPOCH = object()  # watch(…, epoch=ANY_EPOCH): the consumer does not know the epoch; it is not checked


def new_epoch() -> str:
    return secrets.token_hex(8)


def content_sha256(config: dict) -> str:
    """Identity of an artifact's content: its config apart from version and created_at (weights sha included).

    Two puts with the same content are one version: the second returns the first's record.
    """
    content = {k: v for k, v in config.items() if k not in ("version", "created_at")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parse_version(version: int | str | None) -> int | None:
    """1, "1" -> 1; "latest" or None -> None (the newest version)."""
    if version is None or version == "latest":
        return None
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if is_positive_int(version):
        return version
    raise NotFoundError(f"no version {version!r}: versions are positive integers or 'latest'")


def pick_version(name: str, live: list[int], wanted: int | None, url: str) -> int:
    """`wanted` (None: the newest) among a name's live versions, sorted ascending; NotFoundError otherwise."""
    if not live:
        raise NotFoundError(f"no tuner named {name!r} in {url}")
    if wanted is None:
        return live[-1]
    if wanted not in live:
        raise NotFoundError(f"tuner {name!r} has no version {wanted}; versions: {live}")
    return wanted


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'name' -> (name, None); 'name@3' -> (name, 3); 'name@latest' -> (name, None)."""
    name, sep, version = ref.partition("@")
    if sep and not version:
        raise NotFoundError(f"{ref!r}: give NAME or NAME@VERSION")
    return name, parse_version(version or None)


def parse_delete_version(version: int | str | None) -> int | None:
    """delete's version: a number, or None for every version ('latest' is refused: too easy to misread)."""
    if version is None:
        return None
    parsed = parse_version(version)
    if parsed is None:
        raise NotFoundError("delete takes a version number, or none to delete every version; not 'latest'")
    return parsed


def check_name(name: object) -> str:
    if not is_valid_name(name):
        raise NotFoundError(f"no tuner named {name!r}: tuner names are {NAME_RULE}")
    return name  # type: ignore[return-value]


@dataclass(frozen=True)
class ValidatedArtifact:
    """An artifact `TunerStore.validate` decoded and checked, ready for `put_validated`."""

    artifact: TunerArtifact
    weights_sha256: str
    content_sha256: str


class TunerStore(ABC):
    """Stores validated artifacts as immutable versions 1, 2, 3, … per name, and logs every change."""

    url: str
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    log_keep: int = DEFAULT_LOG_KEEP

    # -- writing ------------------------------------------------------------------------------

    def put(self, artifact: TunerArtifact | bytes, *, backbone_fingerprint: str | None = None,
            check: Callable[[TunerArtifact], None] | None = None) -> TunerRecord:
        """Validate, then store as the next version; the same content again returns the existing record.

        The bytes are decoded (and so validated) once, here. `backbone_fingerprint` refuses a tuner trained on
        other backbone weights; `check` may refuse the decoded artifact for any other reason (raise
        ArtifactError). Nothing is written when either refuses. The store assigns versions; the artifact's own
        `version` is ignored.
        """
        return self.put_validated(self.validate(artifact, backbone_fingerprint=backbone_fingerprint, check=check))

    def validate(self, artifact: TunerArtifact | bytes, *, backbone_fingerprint: str | None = None,
                 check: Callable[[TunerArtifact], None] | None = None) -> "ValidatedArtifact":
        """The first half of `put`: decode and check (ArtifactError when refused); nothing is written.

        A server does this without the store's deadline (it is CPU work that takes as long as the artifact is
        big), then `put_validated` with it; the caller may drop the bytes in between."""
        data = _encode(artifact) if isinstance(artifact, TunerArtifact) else artifact
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ArtifactError(f"put takes a TunerArtifact or bytes, got {type(artifact).__name__}")
        decoded = decode_artifact(data, max_bytes=self.max_artifact_bytes, backbone_fingerprint=backbone_fingerprint)
        if check is not None:
            check(decoded)
        sha = config_from_header(parse_header(data))["weights_sha256"]
        return ValidatedArtifact(decoded, sha, content_sha256(decoded.config(weights_sha256=sha)))

    def put_validated(self, validated: "ValidatedArtifact") -> TunerRecord:
        """The second half of `put`: store what `validate` returned as the next version."""
        return self._put_validated(validated.artifact, validated.weights_sha256, validated.content_sha256)

    @abstractmethod
    def _put_validated(self, artifact: TunerArtifact, weights_sha: str, content: str) -> TunerRecord:
        """Store a validated artifact atomically under the next version, unless `content` is already stored."""

    @abstractmethod
    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Delete one version, or every version (None); returns the deleted versions; NotFoundError if none."""

    # -- reading ------------------------------------------------------------------------------

    @abstractmethod
    def get_bytes(self, name: str, version: int | str = "latest") -> bytes:
        """The stored artifact file, its metadata carrying the assigned version."""

    def get(self, name: str, version: int | str = "latest") -> TunerArtifact:
        """The stored artifact, validated again on the way out (nothing on disk or in Redis is trusted)."""
        return decode_artifact(self.get_bytes(name, version), max_bytes=None)

    @abstractmethod
    def record(self, name: str, version: int | str = "latest") -> TunerRecord:
        ...

    @abstractmethod
    def list(self) -> list[TunerRecord]:
        """Every stored version of every tuner, sorted by (name, version)."""

    def latest(self) -> dict[str, TunerRecord]:
        """The newest version of each tuner."""
        out: dict[str, TunerRecord] = {}
        for record in self.list():
            out[record.name] = record
        return out

    # -- change log ---------------------------------------------------------------------------

    @abstractmethod
    def revision(self) -> int:
        """Revision of the newest change; 0 when nothing has changed yet."""

    @abstractmethod
    def changes(self, since_revision: int) -> list[ChangeEvent]:
        """Every change with revision > since_revision, oldest first; StoreResetError when the log, trimmed,
        no longer reaches since_revision."""

    @abstractmethod
    def epoch(self) -> str | None:
        """The store's epoch (set with its first change); None while nothing was ever written."""

    async def watch(self, since_revision: int = 0, *, epoch: str | None | object = ANY_EPOCH,
                    poll_interval: float = 0.2) -> AsyncIterator[ChangeEvent]:
        """Every change with revision > since_revision, in order, forever.

        `epoch`: the store's epoch when `since_revision` was read (None: it had none yet; ANY_EPOCH: not
        checked). Store errors (e.g.
        StoreUnavailableError) propagate; call watch again with the last revision seen. StoreResetError means
        the store cannot bring this consumer up to date by changes: its log no longer reaches `since_revision`
        (trimmed, or the store went back to an earlier revision), or its epoch is not `epoch` (flushed or
        replaced); resynchronise from 0.
        """
        since = since_revision
        current = await asyncio.to_thread(self.revision)
        if since > current:
            raise self._reset_error(since, current)
        if epoch is not ANY_EPOCH:
            await asyncio.to_thread(self.check_epoch, epoch)
        while True:
            events = await self._next_changes(since, poll_interval, epoch)
            for event in events:
                if event.revision != since + 1:
                    raise self._gap_error(since, event.revision)
                yield event
                since = event.revision

    def _reset_error(self, since: int, current: int) -> StoreResetError:
        return StoreResetError(
            f"tuner store {self.url} is at revision {current}, behind revision {since} seen before: "
            "the store was reset or replaced; resynchronise from revision 0"
        )

    def _gap_error(self, since: int, first: int) -> StoreResetError:
        return StoreResetError(
            f"tuner store {self.url}: the change log starts after revision {since} (next kept: {first}); the "
            "changes between were trimmed or lost; resynchronise from revision 0"
        )

    def _epoch_error(self, expected: str | None, found: str | None) -> StoreResetError:
        return StoreResetError(
            f"tuner store {self.url}: its epoch is {found or 'unset'}, not {expected or 'unset'} as before: the "
            "store was flushed or replaced; resynchronise from revision 0"
        )

    def check_epoch(self, expected: str | None) -> None:
        """StoreResetError unless the store's epoch is `expected` (a store that gains its first epoch after a
        consumer saw none counts as changed: the consumer reads it again once, which is always safe)."""
        found = self.epoch()
        if found != expected:
            raise self._epoch_error(expected, found)

    async def _next_changes(self, since: int, poll_interval: float, epoch) -> list[ChangeEvent]:
        def poll() -> list[ChangeEvent]:
            events = self.changes(since)
            if epoch is not ANY_EPOCH:
                self.check_epoch(epoch)
            return events

        events = await asyncio.to_thread(poll)
        if not events:
            await asyncio.sleep(poll_interval)
        return events

    # -- lifecycle ----------------------------------------------------------------------------

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailableError when the backend cannot be reached."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "TunerStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
