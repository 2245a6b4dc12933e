"""A tuner store in a local directory, safe for many processes on one machine.

Layout under the root:

    tuners/<name>/<version>.safetensors   the artifacts, each written once (temp file + fsync + rename)
    changes.jsonl                         the change log: a header line, then one JSON object per change
    .lock                                 flock'ed by every writer

The change log is the source of truth: a version exists when its put is logged and no delete
after it is. Writers hold an exclusive flock on `.lock` while they pick a version, write the
file and append to the log, so concurrent writers in different processes never pick the same
version. A file is written before its put is logged and removed after its delete is logged, so
a crash leaves at worst an unlisted file, never a listed version without its file; a write that
fails (a full disk) removes what it wrote. Readers take no lock: they read only complete log
lines, and each process caches what it has read so far.

Compaction keeps the log's size bounded. The header line holds the store's epoch and its whole
state (live versions, each name's highest version) as of a revision R; the lines after it are
changes. Lines with revisions up to R are history, kept for watchers (`changes`) and not applied
again; lines after R are applied on top. When a writer finds more than twice `log_keep` changes
in the log, it writes a new log (a header with the current state, then the last `log_keep`
changes) to a temporary file, fsyncs it and renames it over the old one, under the write lock.
A reader notices the new file (another inode) and reads it from the start; a watcher whose
revision is older than the oldest change kept gets StoreResetError and reads everything again.
The same compaction sweeps what crashed writers left behind: temporary files, and artifact files
that no log line lists.
"""
from __future__ import annotations

import bisect
import errno
import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from tuner_store.artifact import DEFAULT_MAX_ARTIFACT_BYTES, TunerArtifact, _encode, read_config, utc_now
from tuner_store.errors import NotFoundError, StoreError, StoreFullError, StoreResetError, StoreUnavailableError
from tuner_store.fsutil import atomic_write_bytes, fsync_dir
from tuner_store.records import ChangeEvent, TunerRecord
from tuner_store.store import (
    DEFAULT_LOG_KEEP,
    TunerStore,
    check_name,
    new_epoch,
    parse_delete_version,
    parse_version,
    pick_version,
)

LOG_NAME = "changes.jsonl"
LOCK_NAME = ".lock"
TUNERS_DIR = "tuners"
LOG_FORMAT = 1
LOG_HEAD_BYTES = 64  # a log file's first bytes, compared on each read: they tell one log file from another
_ARTIFACT_FILE = re.compile(r"([1-9][0-9]*)\.safetensors")
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class FileTunerStore(TunerStore):
    def __init__(self, root: str | os.PathLike, *, max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
                 log_keep: int = DEFAULT_LOG_KEEP):
        if log_keep < 1:
            raise StoreError(f"log_keep must be at least 1, not {log_keep}")
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self.max_artifact_bytes = max_artifact_bytes
        self.log_keep = log_keep
        self._tuners = self.root / TUNERS_DIR
        self._log_path = self.root / LOG_NAME
        self._lock_path = self.root / LOCK_NAME
        self._state_lock = threading.RLock()
        self._records: dict[tuple[str, int], TunerRecord] = {}  # live versions' records (immutable, never stale)
        self._reset_state()

    def _reset_state(self) -> None:
        """Forget what was read from the log (it was replaced: compacted, or the store was recreated)."""
        # State replayed from the change log, up to byte `_log_offset` (the end of the last complete line).
        self._log_offset = 0
        self._log_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the log read so far
        self._log_head = b""  # its first bytes: the header's epoch and log id (see _header)
        self._epoch: str | None = None
        self._state_revision = 0  # the header's revision: lines up to it are history, not applied again
        self._base = 0  # changes after this revision are in `_events`; older ones were compacted away
        self._events: list[ChangeEvent] = []
        self._live: dict[str, dict[int, str]] = {}  # name -> version -> content sha256
        self._high_water: dict[str, int] = {}  # name -> highest version ever stored (versions are never reused)

    # -- change log ---------------------------------------------------------------------------

    @contextmanager
    def _os_errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if exc.errno in _FULL:
                raise StoreFullError(f"tuner store {self.url}: cannot {doing}: the disk is full "
                                     f"({exc.strerror})") from None
            raise StoreUnavailableError(f"tuner store {self.url}: cannot {doing}: {exc.strerror or exc}") from None

    def _refresh(self) -> None:
        """Apply the log lines appended since the last call (by any process); start again on a new log file."""
        with self._state_lock, self._os_errors("read the change log"):
            try:
                f = open(self._log_path, "rb")
            except FileNotFoundError:
                if self._log_id is not None:  # the store was removed: it is empty now (and has a new epoch later)
                    self._reset_state()
                    self._records.clear()
                return
            with f:
                st = os.fstat(f.fileno())
                known_epoch = self._epoch
                if self._log_id is not None and ((st.st_dev, st.st_ino) != self._log_id
                                                 or st.st_size < self._log_offset
                                                 or os.pread(f.fileno(), len(self._log_head), 0) != self._log_head):
                    # compacted (renamed over) or replaced (the store removed and made again): read the new log
                    # from its start. The inode alone cannot tell: a file system reuses a freed inode's number at
                    # once, so a log made anew can have the old one's number and be longer; its head (the epoch
                    # and a per-file id, or its first change) differs.
                    self._reset_state()
                self._log_id = (st.st_dev, st.st_ino)
                if not self._log_offset:
                    self._log_head = os.pread(f.fileno(), LOG_HEAD_BYTES, 0)
                f.seek(self._log_offset)
                tail = f.read(st.st_size - self._log_offset)
            complete = tail[: tail.rfind(b"\n") + 1]  # a line without its newline is still being written
            line_start = self._log_offset
            for line in complete.splitlines(keepends=True):
                self._apply(line, line_start)
                line_start += len(line)
            self._log_offset += len(complete)
            if self._log_offset == len(complete) and complete:  # read from the start: drop records of the gone
                if known_epoch is not None and self._epoch != known_epoch:
                    self._records.clear()  # another store: its name@version may hold other content
                else:
                    self._records = {k: r for k, r in self._records.items() if k[1] in self._live.get(k[0], {})}

    def _apply(self, line: bytes, offset: int) -> None:
        try:
            entry = json.loads(line)
            if offset == 0 and "epoch" in entry:  # the header: the state as of a revision
                self._epoch = entry["epoch"]
                self._state_revision = self._base = int(entry["revision"])
                self._live = {name: {int(v): sha for v, sha in versions.items()}
                              for name, versions in entry["live"].items()}
                self._high_water = {name: int(v) for name, v in entry["high_water"].items()}
                return
            revision, action, name = entry["revision"], entry["action"], entry["name"]
            versions = [entry["version"]] if action == "put" else entry["versions"]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise StoreError(f"tuner store {self.url}: the change log is corrupt at byte {offset}") from None
        if not self._events and revision <= self._state_revision:  # the first history line
            self._base = revision - 1
        last = self._events[-1].revision if self._events else self._base
        if revision != last + 1:
            raise StoreError(
                f"tuner store {self.url}: the change log jumps from revision {last} to {revision} at byte {offset}"
            )
        self._events.append(ChangeEvent(revision, action, name, entry.get("version")))
        if revision <= self._state_revision:
            return  # history: the header's state already holds it
        if action == "put":
            self._live.setdefault(name, {})[entry["version"]] = entry["content_sha256"]
            self._high_water[name] = max(self._high_water.get(name, 0), entry["version"])
        else:
            live = self._live.get(name, {})
            for version in versions:
                live.pop(version, None)
                self._records.pop((name, version), None)
            if not live:
                self._live.pop(name, None)

    def _header(self) -> bytes:
        """The first line of a new log file. It starts with the epoch and an id of its own (in this order, within
        LOG_HEAD_BYTES), so that a reader tells this file from any other log that had the same inode number."""
        return json.dumps({
            "epoch": self._epoch or new_epoch(), "log": new_epoch(), "format": LOG_FORMAT,
            "revision": self._revision(), "time": utc_now(),
            "high_water": dict(sorted(self._high_water.items())),
            "live": {name: {str(v): sha for v, sha in sorted(versions.items())}
                     for name, versions in sorted(self._live.items())},
        }).encode() + b"\n"

    def _append(self, entry: dict) -> None:
        """Append one log line; called under the write lock right after `_refresh`. On failure (a full disk)
        nothing of the line stays: readers would ignore a torn line, but the next writer must not build on it."""
        line = json.dumps(entry, sort_keys=True).encode() + b"\n"
        if not self._log_path.exists():
            # a new store: its log starts with the header that carries the epoch, written whole or not at all
            atomic_write_bytes(self._log_path, self._header() + line)
            self._refresh()
            return
        fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND)
        try:
            # A writer that died mid-line left a tail without a newline; it was never committed.
            if os.fstat(fd).st_size > self._log_offset:
                os.ftruncate(fd, self._log_offset)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, self._log_offset)
                raise
        finally:
            os.close(fd)
        self._refresh()
        if len(self._events) > 2 * self.log_keep:
            self._compact()

    def _compact(self) -> None:
        """Under the write lock: the log rewritten as a header (the state now) and the last `log_keep` changes;
        then the files no log line lists are swept."""
        kept = self._events[-self.log_keep:]
        with open(self._log_path, "rb") as f:
            lines = f.read(self._log_offset).splitlines(keepends=True)  # at most 2 x log_keep + 2 lines
        body = b"".join(lines[-len(kept):])
        if json.loads(lines[-len(kept)])["revision"] != kept[0].revision:
            raise StoreError(f"tuner store {self.url}: the change log does not end with the changes read from it")
        atomic_write_bytes(self._log_path, self._header() + body)
        self._refresh()
        self._sweep()

    def _sweep(self, names: list[str] | None = None) -> None:
        """Under the write lock (so no writer is mid-write): remove temporary files and unlisted artifacts."""
        if not self._tuners.is_dir():
            return
        for name in (names if names is not None else os.listdir(self._tuners)):
            name_dir = self._tuners / name
            try:
                entries = os.listdir(name_dir)
            except (FileNotFoundError, NotADirectoryError):
                continue
            live = self._live.get(name, {})
            for entry in entries:
                match = _ARTIFACT_FILE.fullmatch(entry)
                if match is None or int(match.group(1)) not in live:
                    (name_dir / entry).unlink(missing_ok=True)
            if not live:
                try:
                    name_dir.rmdir()
                except OSError:
                    pass

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

    def _revision(self) -> int:
        return self._events[-1].revision if self._events else self._base

    def epoch(self) -> str | None:
        self._refresh()
        with self._state_lock:
            return self._epoch

    def revision(self) -> int:
        self._refresh()
        with self._state_lock:
            return self._revision()

    def changes(self, since_revision: int) -> list[ChangeEvent]:
        self._refresh()
        with self._state_lock:
            if since_revision < self._base:
                raise self._gap_error(since_revision, self._base + 1)
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
            if name_dir.is_dir():
                self._sweep([name])  # what a writer that crashed mid-put left (we hold the lock: none is writing)
            else:
                name_dir.mkdir(parents=True)
                fsync_dir(self._tuners)
            path = self._path(name, version)
            try:
                atomic_write_bytes(path, data)
                self._append({
                    "revision": self._revision() + 1,
                    "action": "put", "name": name, "version": version, "content_sha256": content,
                    "time": utc_now(),
                })
            except BaseException:
                # not logged, so not stored: leave no file behind (a full disk fails here, and must not fill up
                # further with artifacts nobody can see)
                path.unlink(missing_ok=True)
                if name not in self._live:
                    try:
                        name_dir.rmdir()
                    except OSError:
                        pass
                raise
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
                "revision": self._revision() + 1, "action": "delete", "name": name, "version": version,
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
