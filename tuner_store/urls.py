"""Opening a tuner store from its URL: file:///path, a plain path, redis://host:port/db, or a server's http(s)://."""
from __future__ import annotations

import os

from tuner_store.artifact import DEFAULT_MAX_ARTIFACT_BYTES
from tuner_store.errors import StoreError
from tuner_store.file_store import FileTunerStore
from tuner_store.server_store import ServerTunerStore, is_server_url
from tuner_store.store import DEFAULT_LOG_KEEP, TunerStore

DEFAULT_STORE_URL = "file://./data/tuners"
STORE_URL_FORMS = ("file:///absolute/path", "file://relative/path", "a plain path", "redis://host:port/db",
                   "http(s)://server (a running restune server)")


def open_store(url: str | None = None, *, max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
               log_keep: int = DEFAULT_LOG_KEEP, timeout: float | None = None) -> TunerStore | ServerTunerStore:
    """A store from its URL: file:///abs/path, file://relative/path, a plain path, redis://host:port/db, or
    http(s)://host:port (a running server, through its API: readable and writable, not watchable).

    `log_keep`: revisions the change log keeps (file and Redis stores). `timeout`: seconds a Redis call may take
    before it fails (None: the store's default). Nothing is connected or created here: a Redis store connects
    on first use, a file store creates its directory on the first write.
    """
    url = DEFAULT_STORE_URL if url is None else url
    if not isinstance(url, str) or not url:
        raise StoreError(f"store URL must be a non-empty string; use one of: {', '.join(STORE_URL_FORMS)}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return FileTunerStore(url, max_artifact_bytes=max_artifact_bytes, log_keep=log_keep)
    if scheme == "file":
        if not rest:
            raise StoreError(f"store URL {url!r} names no directory; use one of: {', '.join(STORE_URL_FORMS)}")
        return FileTunerStore(os.path.expanduser(rest), max_artifact_bytes=max_artifact_bytes, log_keep=log_keep)
    if scheme in ("redis", "rediss"):
        from tuner_store.redis_store import RedisTunerStore  # the redis package comes with the 'redis' extra

        return RedisTunerStore(url, max_artifact_bytes=max_artifact_bytes, log_keep=log_keep,
                               **({} if timeout is None else {"timeout": timeout}))
    if is_server_url(url):
        return ServerTunerStore(url)
    raise StoreError(
        f"unknown store URL scheme {scheme + '://'!r} in {url!r}; use one of: {', '.join(STORE_URL_FORMS)}"
    )
