"""A tuner store in Redis (7+), shared by every replica that points at it.

Keys, under a prefix (default "restune"; `?prefix=NAME` in the URL picks another):

    {p}:artifact:{name}:{version}   string: the artifact file
    {p}:versions:{name}             hash: version -> TunerRecord JSON
    {p}:content:{name}              hash: content sha256 -> version (idempotent puts)
    {p}:names                       set: names with at least one version
    {p}:high_water                  hash: name -> highest version ever stored (versions are never reused)
    {p}:revision                    counter: revision of the newest change
    {p}:epoch                       string: a random id set by the first write (see tuner_store.store)
    {p}:changes                     stream: the change log; entry ID "<revision>-0", fields
                                    revision/action/name/version/epoch

Writes run as Lua scripts, so a version is assigned, stored, indexed and logged in one atomic step.
Because a stream entry's ID is its revision, `changes(since)` is one XRANGE from `since + 1`, and a
replica that was away catches up with one call. Each write trims the stream to about its last
`log_keep` entries (XADD MAXLEN ~: whole nodes at a time, so at least that many stay); a watcher
further behind finds a gap and reads everything again. A flushed Redis loses the epoch key; the next
write sets a new one, and every entry carries it, so a watcher notices even when the new revisions
have passed its own. Keys for one store are built inside the scripts, so this targets a single Redis
server (not Redis Cluster).

Every call has a deadline (`timeout`, connect and read): a Redis that hangs (stopped, swapping, a
network partition that drops packets) makes calls fail with StoreUnavailableError after that long,
instead of after the operating system's TCP timeouts. Calls are retried only after a refused or
reset connection (a restarted Redis), never after a timeout: a hung server would only multiply the wait.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tuner_store.artifact import DEFAULT_MAX_ARTIFACT_BYTES, TunerArtifact, _encode, utc_now
from tuner_store.errors import ConflictError, NotFoundError, StoreError, StoreFullError, StoreUnavailableError
from tuner_store.records import ChangeEvent, TunerRecord
from tuner_store.store import (
    ANY_EPOCH,
    DEFAULT_LOG_KEEP,
    TunerStore,
    check_name,
    new_epoch,
    parse_delete_version,
    parse_version,
    pick_version,
)

DEFAULT_PREFIX = "restune"
DEFAULT_TIMEOUT_S = 5.0  # above the watcher's XREAD BLOCK (0.2 s), far below a client's patience

# Both scripts: the store's epoch is set by its first write (NX: kept after), and logged with every change.
_EPOCH = """
redis.call('SET', KEYS[8], ARGV[7], 'NX')
local epoch = redis.call('GET', KEYS[8])
"""

# KEYS: high_water, content, versions, artifact, revision, changes, names, epoch
# ARGV: name, content sha, version, artifact bytes, record JSON, time, new epoch, log_keep
_PUT = """
local existing = redis.call('HGET', KEYS[2], ARGV[2])
if existing then
  return {'exists', existing, redis.call('HGET', KEYS[3], existing)}
end""" + _EPOCH + """
local next_version = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') + 1
if next_version ~= tonumber(ARGV[3]) then
  return {'retry', tostring(next_version)}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SET', KEYS[4], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[7], ARGV[1])
local revision = redis.call('INCR', KEYS[5])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], revision .. '-0', 'revision', revision, 'action', 'put',
           'name', ARGV[1], 'version', ARGV[3], 'time', ARGV[6], 'epoch', epoch)
return {'ok', tostring(revision)}
"""

# KEYS: versions, content, names, revision, changes, -, -, epoch
# ARGV: name, version ('' = every version), time, artifact key prefix ('{p}:artifact:{name}:'), -, -, new epoch,
#       log_keep
_DELETE = """
local versions
if ARGV[2] == '' then
  versions = redis.call('HKEYS', KEYS[1])
elseif redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  versions = {ARGV[2]}
else
  versions = {}
end
if #versions == 0 then
  return {}
end""" + _EPOCH + """
local deleted = {}
for _, v in ipairs(versions) do
  redis.call('DEL', ARGV[4] .. v)
  redis.call('HDEL', KEYS[1], v)
  deleted[v] = true
end
local content = redis.call('HGETALL', KEYS[2])
for i = 1, #content, 2 do
  if deleted[content[i + 1]] then
    redis.call('HDEL', KEYS[2], content[i])
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
end
local revision = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], revision .. '-0', 'revision', revision, 'action', 'delete',
           'name', ARGV[1], 'version', ARGV[2], 'time', ARGV[3], 'epoch', epoch)
return versions
"""

_PUT_ATTEMPTS = 100


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _event(fields: dict[bytes, bytes]) -> ChangeEvent:
    version = fields[b"version"].decode()
    return ChangeEvent(
        revision=int(fields[b"revision"]),
        action=fields[b"action"].decode(),  # type: ignore[arg-type]
        name=fields[b"name"].decode(),
        version=int(version) if version else None,
    )


class RedisTunerStore(TunerStore):
    def __init__(self, url: str, *, max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
                 log_keep: int = DEFAULT_LOG_KEEP, timeout: float = DEFAULT_TIMEOUT_S):
        import redis  # the redis extra; file stores never need it
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
        if not prefix:
            raise StoreError(f"store URL {_redact(url)!r}: prefix must not be empty")
        client_url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "prefix"])))
        self.url = _redact(url)
        self.max_artifact_bytes = max_artifact_bytes
        if log_keep < 1:
            raise StoreError(f"log_keep must be at least 1, not {log_keep}")
        self.log_keep = log_keep
        self.timeout = timeout
        self.prefix = prefix
        try:
            # Few, fast retries, and only of a refused or reset connection: an unreachable Redis is reported
            # within a second, a hung one within `timeout` (see the module docstring).
            self._client = redis.Redis.from_url(
                client_url,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2,
                            supported_errors=(redis.exceptions.ConnectionError,)),
                retry_on_timeout=False,
            )
        except ValueError as exc:
            raise StoreError(f"invalid Redis store URL {self.url!r}: {exc}") from None
        self._redis_errors = (redis.exceptions.RedisError,)
        self._unavailable_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._full_errors = (redis.exceptions.OutOfMemoryError,)
        self._put_script = self._client.register_script(_PUT)
        self._delete_script = self._client.register_script(_DELETE)

    # -- keys ---------------------------------------------------------------------------------

    def _key(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except self._full_errors as exc:
            raise StoreFullError(f"the tuner store's Redis at {self.url} is full: {exc}") from None
        except self._unavailable_errors as exc:
            raise StoreUnavailableError(f"the tuner store's Redis at {self.url} is unreachable: {exc}") from None
        except self._redis_errors as exc:
            raise StoreError(f"Redis at {self.url} failed: {type(exc).__name__}: {exc}") from None

    # -- writing ------------------------------------------------------------------------------

    def _put_validated(self, artifact: TunerArtifact, weights_sha: str, content: str) -> TunerRecord:
        name = artifact.name
        keys_fixed = {
            "high": self._key("high_water"), "content": self._key("content", name),
            "versions": self._key("versions", name), "revision": self._key("revision"),
            "changes": self._key("changes"), "names": self._key("names"), "epoch": self._key("epoch"),
        }
        with self._guard():
            version = int(self._client.hget(keys_fixed["high"], name) or 0) + 1
        # Optimistic: encode with the version we expect; the script refuses if another writer took it first.
        for _ in range(_PUT_ATTEMPTS):
            versioned = replace(artifact, version=version)
            data = _encode(versioned, weights_sha)
            record = TunerRecord.from_config(versioned.config(weights_sha256=weights_sha), len(data))
            keys = [keys_fixed["high"], keys_fixed["content"], keys_fixed["versions"],
                    self._key("artifact", name, version), keys_fixed["revision"], keys_fixed["changes"],
                    keys_fixed["names"], keys_fixed["epoch"]]
            with self._guard():
                reply = self._put_script(
                    keys=keys, args=[name, content, version, data, json.dumps(record.to_json()), utc_now(),
                                     new_epoch(), self.log_keep]
                )
            status = reply[0].decode()
            if status == "ok":
                return record
            if status == "exists":
                return TunerRecord.from_json(json.loads(reply[2]))
            version = int(reply[1])
        raise ConflictError(
            f"could not store {name!r}: concurrent writers took the next version {_PUT_ATTEMPTS} times in a row"
        )

    def delete(self, name: str, version: int | None = None) -> list[int]:
        check_name(name)
        version = parse_delete_version(version)
        with self._guard():
            deleted = self._delete_script(
                keys=[self._key("versions", name), self._key("content", name), self._key("names"),
                      self._key("revision"), self._key("changes"), self._key("unused"), self._key("unused"),
                      self._key("epoch")],
                args=[name, "" if version is None else version, utc_now(), self._key("artifact", name, ""), "", "",
                      new_epoch(), self.log_keep],
            )
        if not deleted:
            with self._guard():
                live = sorted(int(v) for v in self._client.hkeys(self._key("versions", name)))
            if not live:
                raise NotFoundError(f"no tuner named {name!r} in {self.url}")
            raise NotFoundError(f"tuner {name!r} has no version {version}; versions: {live}")
        return sorted(int(v) for v in deleted)

    # -- reading ------------------------------------------------------------------------------

    def _resolve(self, name: str, version: int | str | None) -> int:
        check_name(name)
        wanted = parse_version(version)
        with self._guard():
            live = sorted(int(v) for v in self._client.hkeys(self._key("versions", name)))
        return pick_version(name, live, wanted, self.url)

    def record(self, name: str, version: int | str = "latest") -> TunerRecord:
        resolved = self._resolve(name, version)
        with self._guard():
            raw = self._client.hget(self._key("versions", name), resolved)
        if raw is None:
            raise NotFoundError(f"tuner {name}@{resolved} was just deleted from {self.url}")
        return TunerRecord.from_json(json.loads(raw))

    def get_bytes(self, name: str, version: int | str = "latest") -> bytes:
        resolved = self._resolve(name, version)
        with self._guard():
            data = self._client.get(self._key("artifact", name, resolved))
        if data is None:
            raise NotFoundError(f"tuner {name}@{resolved} was just deleted from {self.url}")
        return data

    def list(self) -> list[TunerRecord]:
        with self._guard():
            names = sorted(n.decode() for n in self._client.smembers(self._key("names")))
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.hvals(self._key("versions", name))
            per_name = pipe.execute()
        records = [TunerRecord.from_json(json.loads(raw)) for values in per_name for raw in values]
        return sorted(records, key=lambda r: (r.name, r.version))

    # -- change log ---------------------------------------------------------------------------

    def revision(self) -> int:
        with self._guard():
            return int(self._client.get(self._key("revision")) or 0)

    def epoch(self) -> str | None:
        with self._guard():
            value = self._client.get(self._key("epoch"))
        return value.decode() if value is not None else None

    def changes(self, since_revision: int) -> list[ChangeEvent]:
        start = max(since_revision, 0) + 1
        with self._guard():
            pipe = self._client.pipeline(transaction=True)
            pipe.xrange(self._key("changes"), min=f"{start}-0", max="+")
            pipe.get(self._key("revision"))
            entries, current = pipe.execute()
        events = [_event(fields) for _, fields in entries]
        if (events and events[0].revision != start) or (not events and int(current or 0) >= start):
            raise self._gap_error(since_revision, events[0].revision if events else int(current or 0))
        return events

    def _wait_for_changes(self, since: int, timeout: float, epoch) -> list[ChangeEvent]:
        # XREAD BLOCK returns as soon as a writer adds an entry after `since`, so replicas react at once.
        with self._guard():
            reply = self._client.xread(
                {self._key("changes"): f"{max(since, 0)}-0"}, block=max(1, int(timeout * 1000))
            )
            if not reply:
                # A Redis without persistence that restarted starts again at revision 0; waiting for entries
                # after `since` would then wait forever. Entries trimmed away, or a flush, show here too.
                current, found = self._client.mget(self._key("revision"), self._key("epoch"))
                current = int(current or 0)
                if current < since:
                    raise self._reset_error(since, current)
                if epoch is not ANY_EPOCH and (found.decode() if found is not None else None) != epoch:
                    raise self._epoch_error(epoch, found.decode() if found is not None else None)
                if current > since:  # written since the XREAD gave up: read them, or find them trimmed
                    return self.changes(since)
                return []
        streams = reply.items() if isinstance(reply, dict) else (reply or [])  # RESP3 answers a dict
        entries = [fields for _, stream in streams for _, fields in stream]
        if epoch is not ANY_EPOCH:
            for fields in entries:
                found = fields.get(b"epoch")
                if (found.decode() if found is not None else None) != epoch:
                    raise self._epoch_error(epoch, found.decode() if found is not None else None)
        return [_event(fields) for fields in entries]

    async def _next_changes(self, since: int, poll_interval: float, epoch) -> list[ChangeEvent]:
        return await asyncio.to_thread(self._wait_for_changes, since, poll_interval, epoch)

    # -- lifecycle ----------------------------------------------------------------------------

    def ping(self) -> None:
        with self._guard():
            self._client.ping()

    def close(self) -> None:
        self._client.close()
