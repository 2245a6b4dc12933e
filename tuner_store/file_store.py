"""A tuner store in a local directory, safe for many processes on one machine.

Layout under the root:

    tuners/<name>/<version>.safetensors   the artifacts, each written once (temp file + fsync + rename)
    changes.jsonl                         the change log: one JSON object per line, append-only
    .lock                                 flock'ed by every writer

The change log is the source of truth: a version exists when its put is logged and no delete
after it is. Writers hold an exclusive flock on `.lock` while they pick a version, write the
file and append to the log, so concurrent writers in different processes never pick the same
version. A file is written before its put is logged and removed after its delete is logged, so
a crash leaves at worst an unlisted file, never a listed version without its file. Readers take
no lock: they read only complete log lines, and each process caches what it has read so far.
"""
from __future__ import annotations

import bisect
import errno
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from tuner_store.artifact import DEFAULT_MAX_ARTIFACT_BYTES, TunerArtifact, _encode, read_config, utc_now
from tuner_store.errors import NotFoundError, StoreError, StoreResetError, StoreUnavailableError
from tuner_store.fsutil import atomic_write_bytes, fsync_dir
from tuner_store.records import ChangeEvent, TunerRecord
from tuner_store.store import (
    TunerStore,
    check_name,
    parse_delete_version,
    parse_version,
    pick_version,
)

LOG_NAME = "changes.jsonl"
LOCK_NAME = ".lock"
TUNERS_DIR = "tuners"


class FileTunerStore(TunerStore):
    def __init__(self, root: str | os.PathLike, *, max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES):
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self.max_artifact_bytes = max_artifact_bytes
        self._tuners = self.root / TUNERS_DIR
        self._log_path = self.root / LOG_NAME
        self._lock_path = self.root / LOCK_NAME
        # State replayed from the change log, up to byte `_log_offset` (the end of the last complete line).
        self._state_lock = threading.RLock()
        self._log_offset = 0
        self._events: list[ChangeEvent] = []
        self._live: dict[str, dict[int, str]] = {}  # name -> version -> content sha256
        self._high_water: dict[str, int] = {}  # name -> highest version ever stored (versions are never reused)
        self._records: dict[tuple[str, int], TunerRecord] = {}  # versions are immutable, so this never goes stale

    # -- change log ---------------------------------------------------------------------------

    @contextmanager
    def _os_errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StoreUnavailableError(f"tuner store {self.url}: cannot {doing}: {exc.strerror or exc}") from None

    def _refresh(self) -> None:
        """Apply the log lines appended since the last call (by any process)."""
        with self._state_lock, self._os_errors("read the change log"):
            try:
                f = open(self._log_path, "rb")
            except FileNotFoundError:
                if self._log_offset:
                    raise StoreResetError(
                        f"tuner store {self.url}: the change log {self._log_path} disappeared"
                    ) from None
                return
            with f:
                size = os.fstat(f.fileno()).st_size
                if size < self._log_offset:
                    raise StoreResetError(
                        f"tuner store {self.url}: the change log {self._log_path} shrank; it is append-only"
                    )
                f.seek(self._log_offset)
                tail = f.read(size - self._log_offset)
            complete = tail[: tail.rfind(b"\n") + 1]  # a line without its newline is still being written
            line_start = self._log_offset
            for line in complete.splitlines(keepends=True):
                self._apply(line, line_start)
                line_start += len(line)
            self._log_offset += len(complete)

    def _apply(self, line: bytes, offset: int) -> None:
        try:
            entry = json.loads(line)
            revision, action, name = entry["revision"], entry["action"], entry["name"]
            versions = [entry["version"]] if action == "put" else entry["versions"]
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"tuner store {self.url}: the change log is corrupt at byte {offset}") from None
        last = self._events[-1].revision if self._events else 0
        if revision != last + 1:
            raise StoreError(
                f"tuner store {self.url}: the change log jumps from revision {last} to {revision} at byte {offset}"
            )
        if action == "put":
            self._live.setdefault(name, {})[entry["version"]] = entry["content_sha256"]
            self._high_water[name] = max(self._high_water.get(name, 0), entry["version"])
        else:
            live = self._live.get(name, {})
            for version in versions:
                live.pop(version, None)
            if not live:
                self._live.pop(name, None)
        self._events.append(ChangeEvent(revision, action, name, entry.get("version")))

    def _append(self, entry: dict) -> None:
        """Append one log line; called under the write lock right after `_refresh`."""
        created = not self._log_path.exists()
        fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # A writer that died mid-line left a tail without a newline; it was never committed.
            if os.fstat(fd).st_size > self._log_offset:
                os.ftruncate(fd, self._log_offset)
            os.write(fd, json.dumps(entry, sort_keys=True).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.root)
        self._refresh()

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        with self._state_lock, self._os_errors("write"):
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._refresh()
                yield
            finally:
                os.close(fd)  # releases the flock

    def revision(self) -> int:
        self._refresh()
        with self._state_lock:
            return self._events[-1].revision if self._events else 0

    def changes(self, since_revision: int) -> list[ChangeEvent]:
        self._refresh()
        with self._state_lock:
            start = bisect.bisect_right(self._events, since_revision, key=lambda e: e.revision)
            return self._events[start:]

    # -- writing ------------------------------------------------------------------------------

    def _path(self, name: str, version: int) -> Path:
        return self._tuners / name / f"{version}.safetensors"

    def _put_validated(self, artifact: TunerArtifact, weights_sha: str, content: str) -> TunerRecord:
        name = artifact.name
        with self._write_lock():
            for version, stored in self._live.get(name, {}).items():
                if stored == content:
                    return self._record(name, version)
            version = self._high_water.get(name, 0) + 1
            versioned = replace(artifact, version=version)
            data = _encode(versioned, weights_sha)
            name_dir = self._tuners / name
            if not name_dir.is_dir():
                name_dir.mkdir(parents=True)
                fsync_dir(self._tuners)
            atomic_write_bytes(self._path(name, version), data)
            self._append({
                "revision": self._events[-1].revision + 1 if self._events else 1,
                "action": "put", "name": name, "version": version, "content_sha256": content, "time": utc_now(),
            })
            record = TunerRecord.from_config(versioned.config(weights_sha256=weights_sha), len(data))
            self._records[(name, version)] = record
            return record

    def delete(self, name: str, version: int | None = None) -> list[int]:
        check_name(name)
        version = parse_delete_version(version)
        with self._write_lock():
            live = sorted(self._live.get(name, {}))
            if not live:
                raise NotFoundError(f"no tuner named {name!r} in {self.url}")
            if version is not None and version not in live:
                raise NotFoundError(f"tuner {name!r} has no version {version}; versions: {live}")
            deleted = live if version is None else [version]
            self._append({
                "revision": self._events[-1].revision + 1, "action": "delete", "name": name, "version": version,
                "versions": deleted, "time": utc_now(),
            })
            for v in deleted:
                self._path(name, v).unlink(missing_ok=True)
            name_dir = self._tuners / name
            try:
                name_dir.rmdir()
            except OSError as exc:  # still holds other versions (or a crashed writer's temp file)
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            fsync_dir(self._tuners)
            return deleted

    # -- reading ------------------------------------------------------------------------------

    def _resolve(self, name: str, version: int | str | None) -> int:
        check_name(name)
        wanted = parse_version(version)
        self._refresh()
        with self._state_lock:
            live = sorted(self._live.get(name, {}))
        return pick_version(name, live, wanted, self.url)

    def _record(self, name: str, version: int) -> TunerRecord:
        cached = self._records.get((name, version))
        if cached is not None:
            return cached
        path = self._path(name, version)
        try:
            with self._os_errors(f"read {path}"):
                size = path.stat().st_size
                config = read_config(path)
        except StoreUnavailableError:
            if not path.exists():  # deleted by another process since we read the log
                raise NotFoundError(f"tuner {name}@{version} was just deleted from {self.url}") from None
            raise
        record = TunerRecord.from_config(config, size)
        self._records[(name, version)] = record
        return record

    def record(self, name: str, version: int | str = "latest") -> TunerRecord:
        return self._record(name, self._resolve(name, version))

    def get_bytes(self, name: str, version: int | str = "latest") -> bytes:
        resolved = self._resolve(name, version)
        path = self._path(name, resolved)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"tuner {name}@{resolved} was just deleted from {self.url}") from None
        except OSError as exc:
            raise StoreUnavailableError(f"tuner store {self.url}: cannot read {path}: {exc.strerror}") from None

    def list(self) -> list[TunerRecord]:
        self._refresh()
        with self._state_lock:
            refs = sorted((name, v) for name, versions in self._live.items() for v in versions)
        records = []
        for name, version in refs:
            try:
                records.append(self._record(name, version))
            except NotFoundError:
                continue
        return records

    def ping(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreUnavailableError(f"tuner store {self.url}: {self.root} is not a directory")
        if not self.root.exists():
            parent = next((p for p in self.root.parents if p.exists()), None)
            if parent is None or not os.access(parent, os.W_OK):
                raise StoreUnavailableError(f"tuner store {self.url}: cannot create {self.root}")
            return
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StoreUnavailableError(f"tuner store {self.url}: {self.root} is not readable and writable")
        self._refresh()
