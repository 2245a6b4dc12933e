"""The hot-loaded tuner set: watches the store and swaps in a new immutable snapshot per change.

A batch reads `registry.snapshot` once when it starts and finishes on that tuner
set, whatever happens meanwhile: changes build a complete new snapshot (tuners +
what each kind runs on, e.g. the packed engine) off the event loop and replace the
reference in one assignment. An artifact that fails validation is logged and
counted; the version that was serving keeps serving. Kinds are looked up in
`server.kinds`, never branched on.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from server.kinds import SERVED_KINDS, ServingRuntime
from tuner_store.artifact import backbone_mismatch, decode_artifact
from tuner_store.errors import ArtifactError, NotFoundError, StoreResetError
from tuner_store.kinds import build_tuner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedTuner:
    name: str
    version: int
    kind: str
    labels: tuple[str, ...]
    created_at: str
    metrics: dict
    module: object  # the built module, placed for serving (see server.kinds)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class TunerSnapshot:
    tuners: Mapping[str, Mapping[str, LoadedTuner]] = field(
        default_factory=lambda: {kind: {} for kind in SERVED_KINDS})  # kind -> name -> tuner
    runners: Mapping[str, object] = field(default_factory=dict)  # kind -> what its requests run on, if anything
    revision: int = 0

    def of_kind(self, kind: str) -> Mapping[str, LoadedTuner]:
        return self.tuners.get(kind, {})

    def get(self, name: str) -> LoadedTuner | None:
        for tuners in self.tuners.values():
            if name in tuners:
                return tuners[name]
        return None


def check_serves(runtime: ServingRuntime):
    """A store `put` check: refuse an artifact whose kind this server runs on a frozen model it was not trained on."""
    def check(artifact) -> None:
        fingerprint = SERVED_KINDS[artifact.kind].fingerprint(runtime)
        mismatch = backbone_mismatch(artifact.backbone, fingerprint) if fingerprint is not None else None
        if mismatch:
            raise ArtifactError(mismatch, name=artifact.name)

    return check


def decode_for(runtime: ServingRuntime, data: bytes):
    """Artifact bytes decoded once, and checked against what this server runs their kind on."""
    artifact = decode_artifact(data, max_bytes=None)
    check_serves(runtime)(artifact)
    return artifact


class TunerRegistry:
    def __init__(self, store, runtime: ServingRuntime, *, metrics=None):
        self.store = store
        self.runtime = runtime
        self.metrics = metrics
        self._snapshot = TunerSnapshot()
        self._lock = threading.Lock()  # serialises snapshot builders; readers never take it
        self.last_error: str | None = None
        self.failures: dict[str, str] = {}  # name -> why its newest version is not serving
        self._unloaded: set[str] = set()  # names unloaded on this replica (see the repository extension below)

    @property
    def snapshot(self) -> TunerSnapshot:
        return self._snapshot

    # -- loading ----------------------------------------------------------------------------------

    def _load(self, name: str, version: int) -> LoadedTuner | None:
        """Fetch, validate and build one tuner version; None (and a logged reason) when it cannot serve here."""
        if name in self._unloaded:  # unloaded on this replica: store changes for it wait for load(name)
            return None
        data = self.store.get_bytes(name, version)
        kind = None
        try:
            artifact = decode_for(self.runtime, data)
            kind = SERVED_KINDS[artifact.kind]
            if kind.fingerprint(self.runtime) is None:
                return None  # a kind this server does not serve (generation not enabled)
            module = kind.place(self.runtime, build_tuner(artifact))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            what = kind.name if kind is not None else "unknown kind"
            self.failures[name] = f"{name}@{version} ({what}) cannot serve here: {reason}"
            log.warning("tuner %s@%s not loaded, keeping the previous version: %s", name, version, reason)
            if self.metrics is not None:
                self.metrics.hotload_failures.inc()
            return None
        self.failures.pop(name, None)
        return LoadedTuner(name=name, version=int(version), kind=artifact.kind, labels=tuple(artifact.labels),
                           created_at=artifact.created_at, metrics=dict(artifact.metrics), module=module)

    def _publish(self, tuners: dict[str, dict[str, LoadedTuner]], revision: int) -> None:
        ordered = {kind: dict(sorted(tuners.get(kind, {}).items())) for kind in SERVED_KINDS}
        runners = {}
        for kind, served in SERVED_KINDS.items():
            runner = served.assemble(self.runtime, {n: t.module for n, t in ordered[kind].items()})
            if runner is not None:
                runners[kind] = runner
        self._snapshot = TunerSnapshot(ordered, runners, revision)
        if self.metrics is not None:
            for kind, loaded in ordered.items():
                self.metrics.loaded_tuners.labels(kind=kind).set(len(loaded))
            self.metrics.store_revision.set(revision)

    def load_all(self) -> TunerSnapshot:
        """Initial sync: the newest version of every tuner in the store."""
        with self._lock:
            revision = self.store.revision()
            tuners: dict[str, dict[str, LoadedTuner]] = {kind: {} for kind in SERVED_KINDS}
            for name, record in self.store.latest().items():
                loaded = self._load(name, record.version)
                if loaded is not None:
                    tuners[loaded.kind][name] = loaded
            self._publish(tuners, revision)
            log.info("loaded %s tuners (store revision %d)",
                     ", ".join(f"{len(t)} {kind}" for kind, t in tuners.items()), revision)
            return self._snapshot

    def apply_change(self, name: str, revision: int) -> None:
        """Bring one name up to date with the store (whatever the event was) and publish."""
        start = time.perf_counter()
        with self._lock:
            current = self._snapshot
            tuners = {kind: dict(current.of_kind(kind)) for kind in SERVED_KINDS}
            try:
                record = self.store.record(name, "latest")
            except NotFoundError:
                record = None
            served = current.get(name)
            if record is None:
                for loaded in tuners.values():
                    loaded.pop(name, None)
                self.failures.pop(name, None)
            elif served is None or served.version != record.version:
                fresh = self._load(name, record.version)
                if fresh is not None:
                    for loaded in tuners.values():
                        loaded.pop(name, None)
                    tuners[fresh.kind][name] = fresh
            self._publish(tuners, max(revision, current.revision))
        if self.metrics is not None:
            self.metrics.hotload_seconds.observe(time.perf_counter() - start)

    # -- repository extension (v2): load / unload / state --------------------------------------------------
    # What POST /v2/repository/models/{name}/load|unload and the repository index ask of this replica. Only the
    # replica's served set changes; the store is never written.

    def load(self, name: str) -> LoadedTuner:
        """Serve the newest stored version of `name` here now (blocking), and clear a previous unload.

        NotFoundError when the store has no such tuner; ArtifactError when it cannot serve on this replica.
        """
        with self._lock:
            record = self.store.record(name, "latest")  # NotFoundError: no such tuner
            self._unloaded.discard(name)
            current = self._snapshot
            served = current.get(name)
            if served is not None and served.version == record.version:
                return served
            fresh = self._load(name, record.version)
            if fresh is None:
                reason = self.failures.get(name) or f"{record.ref} is a {record.kind} tuner, which this server " \
                                                    "does not serve"
                raise ArtifactError(reason, name=name)
            tuners = {kind: dict(current.of_kind(kind)) for kind in SERVED_KINDS}
            for loaded in tuners.values():
                loaded.pop(name, None)
            tuners[fresh.kind][name] = fresh
            self._publish(tuners, current.revision)
            return fresh

    def unload(self, name: str) -> None:
        """Stop serving `name` on this replica, leaving the store alone; it stays unloaded until load(name).

        NotFoundError when it is neither served here nor in the store.
        """
        with self._lock:
            current = self._snapshot
            if current.get(name) is None and name not in self._unloaded:
                self.store.record(name, "latest")  # NotFoundError: nothing by that name anywhere
            self._unloaded.add(name)
            self.failures.pop(name, None)
            tuners = {kind: {n: t for n, t in current.of_kind(kind).items() if n != name} for kind in SERVED_KINDS}
            self._publish(tuners, current.revision)

    def state_of(self, name: str) -> tuple[str, str | None]:
        """("READY", None) when `name` is served here now, else ("UNAVAILABLE", why)."""
        if name in self._unloaded:
            return "UNAVAILABLE", "unloaded on this replica"
        if self._snapshot.get(name) is not None:
            return "READY", None
        return "UNAVAILABLE", self.failures.get(name) or "not loaded on this replica"

    # -- end of the repository extension --------------------------------------------------------------------

    async def watch_forever(self, *, retry_seconds: float = 1.0) -> None:
        """Apply every store change in order; reconnect from the last revision after an outage."""
        while True:
            try:
                async for event in self.store.watch(self._snapshot.revision):
                    await asyncio.to_thread(self.apply_change, event.name, event.revision)
            except asyncio.CancelledError:
                raise
            except StoreResetError as exc:  # the store lost history (e.g. a Redis without persistence restarted)
                log.warning("store reset (%s); reloading every tuner from the store", exc)
                try:
                    await asyncio.to_thread(self.load_all)
                except Exception as reload_exc:
                    log.warning("reload after store reset failed (%s); retrying", reload_exc)
                    await asyncio.sleep(retry_seconds)
            except Exception as exc:  # store away: keep serving what is loaded, retry
                if self.last_error != str(exc):
                    log.warning("store watch interrupted (%s: %s); serving the loaded tuners, retrying",
                                type(exc).__name__, exc)
                self.last_error = str(exc)
                await asyncio.sleep(retry_seconds)
            else:
                self.last_error = None
                await asyncio.sleep(retry_seconds)
