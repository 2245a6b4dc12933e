"""The tuners a replica serves: a catalog of the store's records, and the ones resident, loaded on demand.

- The catalog mirrors the store's newest record of every tuner. It is read once at start (records only, no
  artifact: start-up does not grow with what the tuners weigh) and then follows the store's change log, one
  record per change.
- A tuner is made resident when a request names it (or at start, pinned first, then the newest, while the
  budget lasts). Concurrent misses on one tuner load it once. Making room evicts the least recently used
  tuners that are neither pinned nor held by a request in flight (`server.residency`).
- A change to a resident tuner loads the new version into a fresh slot and swaps it in: batches that started
  before finish on the old version. A version that cannot serve here is recorded as the tuner's problem; a
  resident previous version keeps serving.

Kinds are looked up in `server.kinds`, never branched on.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace

from server.kinds import SERVED_KINDS, ServingRuntime
from server.residency import HostCache, LoadedTuner, ResidencyError, ResidentSet
from tuner_store.artifact import TunerArtifact, backbone_mismatch, decode_artifact
from tuner_store.errors import ArtifactError, NotFoundError, StoreError, StoreResetError
from tuner_store.kinds import build_tuner
from tuner_store.records import TunerRecord

log = logging.getLogger(__name__)

UNLOADED = "unloaded on this replica"


class NotServedError(LookupError):
    """A tuner in the store that this replica does not serve (unloaded, its kind not enabled, or broken)."""


def check_serves(runtime: ServingRuntime):
    """A store `put` check: refuse an artifact whose kind this server runs on a frozen model it was not trained on."""
    def check(artifact) -> None:
        fingerprint = SERVED_KINDS[artifact.kind].fingerprint(runtime)
        mismatch = backbone_mismatch(artifact.backbone, fingerprint) if fingerprint is not None else None
        if mismatch:
            raise ArtifactError(mismatch, name=artifact.name)

    return check


def decode_for(runtime: ServingRuntime, data: bytes) -> TunerArtifact:
    """Artifact bytes decoded once, and checked against what this server runs their kind on."""
    artifact = decode_artifact(data, max_bytes=None)
    check_serves(runtime)(artifact)
    return artifact


def artifact_bytes(artifact: TunerArtifact) -> int:
    return sum(t.numel() * t.element_size() for t in artifact.tensors.values())


def is_transient(exc: BaseException) -> bool:
    """A store that could not be read now (unreachable, full, reset) or a version deleted meanwhile: nothing is
    wrong with the tuner, so it is not recorded as its problem (that would keep it from serving until its next
    version); the watcher retries the change, and the next request loads it."""
    return isinstance(exc, StoreError) and not isinstance(exc, ArtifactError)


@dataclass(frozen=True)
class EvictedTuner:
    """What the host tier keeps of a tuner evicted for room: how it was served, and what its kind kept of it."""

    tuner: LoadedTuner
    kept: object


class Lease:
    """What a request holds while it runs: its tuners stay resident until `release`."""

    def __init__(self, registry: "TunerRegistry", names: list[str]):
        self.registry = registry
        self.names = names
        self.tuners = {name: registry.resident.get(name) for name in names}
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.registry.resident.release(self.names)
            self.registry.report_requests()


class TunerRegistry:
    def __init__(self, store, runtime: ServingRuntime, *, metrics=None, resident_bytes: int | None = None,
                 host_cache_bytes: int = 0, pinned: Iterable[str] = ()):
        self.store = store
        self.runtime = runtime
        self.metrics = metrics
        self.resident = ResidentSet(resident_bytes)
        self.configured_pins = frozenset(pinned)  # --pin: names pinned whether or not they exist yet
        self.resident.pinned.update(pinned)
        self.host = HostCache(host_cache_bytes)
        self.revision = 0
        self.epoch: str | None = None  # the store's epoch when the catalog was read (see tuner_store.store)
        self._records: dict[str, TunerRecord] = {}
        self._by_kind: dict[str, dict[str, TunerRecord]] = {kind: {} for kind in SERVED_KINDS}
        self.failures: dict[str, tuple[int, str]] = {}  # name -> (version, why it cannot serve here)
        self.unloaded: set[str] = set()  # the repository extension's unload: not served here until loaded
        self._loading: dict[str, Future] = {}
        self._waiting: set[str] = set()
        self._lock = threading.Lock()  # the catalog and the loads in flight
        self._apply_lock = threading.Lock()  # store changes, applied one at a time and in order
        # where a tuner is placed (the engine) and whether it is resident change together: an eviction that takes a
        # tuner out of the engine must not undo a load of the same name that placed it again meanwhile
        self._placement = threading.RLock()
        self.last_error: str | None = None
        self.closed = threading.Event()  # the server is stopping: background loading ends
        self.warm_up_done = threading.Event()  # the start-up warm-up (resident set, then host tier) has finished
        # every series exists from the start (at 0), so a scrape before the first sync sees the same set as after
        self._report_catalog()
        self._report_residency()
        self.report_requests()

    # -- the catalog ------------------------------------------------------------------------------------

    def records(self, kind: str) -> Mapping[str, TunerRecord]:
        """The newest record of every tuner of `kind` in the store (a live mapping: read, do not keep)."""
        return self._by_kind.get(kind, {})

    def record(self, name: str) -> TunerRecord | None:
        return self._records.get(name)

    def names(self) -> list[str]:
        return sorted(self._records)

    def _set_record(self, name: str, record: TunerRecord | None) -> None:
        with self._lock:
            old = self._records.pop(name, None)
            if old is not None:
                self._by_kind.get(old.kind, {}).pop(name, None)
            if record is not None:
                self._records[name] = record
                self._by_kind.setdefault(record.kind, {})[name] = record
        self._report_catalog()

    def sync(self) -> None:
        """The whole catalog from the store (at start, and when the store lost its history)."""
        with self._apply_lock:
            epoch = self.store.epoch()  # first: a flush after this shows as another epoch at the next watch
            revision = self.store.revision()
            latest = self.store.latest()
            with self._lock:
                self._records = dict(latest)
                self._by_kind = {kind: {} for kind in SERVED_KINDS}
                for name, record in latest.items():
                    self._by_kind.setdefault(record.kind, {})[name] = record
            for tuner in self.resident.items():
                record = latest.get(tuner.name)
                if record is None:
                    self._evict(tuner.name)
                elif record.version != tuner.version:  # changed while this replica could not follow the log
                    try:
                        self._load(record)
                    except Exception:  # recorded (or transient); the next request tries again
                        pass
            self._forget_gone(set(latest))
            self.epoch = epoch
            self.revision = max(self.revision, revision)
        self._report_catalog()
        log.info("catalog: %s tuners (store revision %d)",
                 ", ".join(f"{len(v)} {k}" for k, v in self._by_kind.items()), revision)

    def apply_change(self, name: str, revision: int) -> None:
        """Bring one name up to date with the store (whatever the event was)."""
        start = time.perf_counter()
        with self._apply_lock:
            try:
                record = self.store.record(name, "latest")
            except NotFoundError:
                record = None
            if record is not None and self._records.get(name) == record and self._holds(record):
                # applied already: this replica's own write, applied at once, comes back from the change log;
                # decoding it again would double an upload's work
                self.revision = max(self.revision, revision)
                if self.metrics is not None:
                    self.metrics.store_revision.set(self.revision)
                return
            self._set_record(name, record)
            self.host.discard(name)
            if record is None:
                self._evict(name)
                self._forget(name)
            else:
                served = self.resident.get(name)
                if served is not None and served.version != record.version:
                    try:
                        self._load(record)  # the new version into a fresh slot, swapped in
                    except Exception as exc:  # recorded as the tuner's problem; the old version keeps serving
                        if is_transient(exc):
                            raise  # the store, not the tuner: the watcher applies this change again
                elif served is None and name not in self.unloaded:
                    self._prefetch(record)
            self.revision = max(self.revision, revision)
        if self.metrics is not None:
            self.metrics.store_revision.set(self.revision)
            self.metrics.hotload_seconds.observe(time.perf_counter() - start)

    def _holds(self, record: TunerRecord) -> bool:
        """This replica has done with this version what applying it does: made it resident, cached it in host
        memory, or recorded why it cannot serve."""
        served = self.resident.get(record.name)
        failure = self.failures.get(record.name)
        return ((served is not None and served.version == record.version) or self.host.holds(record.name, record.version)
                or (failure is not None and failure[0] == record.version))

    def _forget_gone(self, present: set[str]) -> None:
        """What this replica noted about tuners no longer in the store: their problems, unloads and pins (a pin
        given with --pin stays: it names a tuner that may come). Nothing is kept per deleted name, so tuners
        created and deleted for months leave no trace."""
        with self._lock:
            for name in [n for n in self.failures if n not in present]:
                del self.failures[name]
            self.unloaded.intersection_update(present)
            self.resident.pinned.intersection_update(present | self.configured_pins)

    def _forget(self, name: str) -> None:
        with self._lock:
            self.failures.pop(name, None)
            self.unloaded.discard(name)
            if name not in self.configured_pins:
                self.resident.pinned.discard(name)

    async def watch_forever(self, *, retry_seconds: float = 1.0) -> None:
        """Apply every store change in order; reconnect from the last revision after an outage."""
        while True:
            try:
                async for event in self.store.watch(self.revision, epoch=self.epoch):
                    await asyncio.to_thread(self.apply_change, event.name, event.revision)
            except asyncio.CancelledError:
                raise
            except StoreResetError as exc:  # the store lost history (restarted empty, flushed, log trimmed past us)
                log.warning("store reset (%s); reading the whole catalog again", exc)
                try:
                    self.revision = 0
                    await asyncio.to_thread(self.sync)
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

    # -- residency --------------------------------------------------------------------------------------

    def serves(self, name: str) -> tuple[bool, str | None]:
        """Whether a request may name this tuner here, and if not why."""
        record = self._records.get(name)
        if record is None:
            return False, "not in the tuner store"
        if name in self.unloaded:
            return False, UNLOADED
        if SERVED_KINDS[record.kind].fingerprint(self.runtime) is None:
            return False, f"{record.kind} tuners are not served here ({SERVED_KINDS[record.kind].endpoint} is off)"
        failure = self.failures.get(name)
        if failure is not None and failure[0] == record.version and name not in self.resident:
            return False, failure[1]
        return True, None

    def _fetch(self, record: TunerRecord) -> TunerArtifact:
        cached = self.host.take_if(record.name, record.version, TunerArtifact)
        if cached is not None:
            return cached
        return decode_for(self.runtime, self.store.get_bytes(record.name, record.version))

    def _prefetch(self, record: TunerRecord) -> None:
        """Validate a changed, non-resident tuner now and keep it in the host cache: its first request skips
        the store, and a version that cannot serve is known before anyone asks for it."""
        if self.host.budget <= 0 or SERVED_KINDS[record.kind].fingerprint(self.runtime) is None:
            return
        try:
            artifact = decode_for(self.runtime, self.store.get_bytes(record.name, record.version))
        except Exception as exc:
            if not is_transient(exc):
                self._failed(record, exc)
            return
        self.failures.pop(record.name, None)
        self.host.put(record.name, record.version, artifact, artifact_bytes(artifact))
        self._report_residency()

    def _failed(self, record: TunerRecord, exc: Exception) -> None:
        reason = f"{record.ref} ({record.kind}) cannot serve here: {type(exc).__name__}: {exc}"
        with self._lock:
            if record.name not in self._records:  # deleted meanwhile: nothing to note
                return
            self.failures[record.name] = (record.version, reason)
        log.warning("tuner %s not loaded, keeping what was serving: %s", record.ref, exc)
        if self.metrics is not None:
            self.metrics.hotload_failures.inc()

    def _make_room(self, nbytes: int, keep: str, deadline: float | None) -> None:
        """Evict least-recently-used tuners until `nbytes` more fit; what the host tier can keep of them it keeps
        (an evicted head's packed slot: putting it back is a copy)."""
        for gone in self.resident.room_for(nbytes, keep=keep, deadline=deadline):
            served = SERVED_KINDS[gone.kind]
            with self._placement:
                if gone.name in self.resident:  # loaded again since it was chosen: that placement stays
                    continue
                kept = served.keep_evicted(self.runtime, gone.name) if self.host.budget > 0 else None
                served.uninstall(self.runtime, gone.name)
            if kept is not None:
                self.host.put(gone.name, gone.version, EvictedTuner(gone, kept), getattr(kept, "nbytes", gone.nbytes))
            if self.metrics is not None:
                self.metrics.tuner_evictions.inc()

    def _add_resident(self, loaded: LoadedTuner, reserved: int) -> None:
        """Make a loaded tuner resident, unless it was unloaded or deleted while it loaded: `unload` and a delete
        mark the name first and evict second, and this adds first and checks second, so one of the two sees the
        other and the tuner does not stay resident."""
        self.resident.add(loaded, reserved=reserved)
        if loaded.name in self.unloaded or loaded.name not in self._records:
            self._evict(loaded.name)

    def _reinstall(self, record: TunerRecord, deadline: float | None, start: float) -> LoadedTuner | None:
        """Put back a tuner the host tier kept when it was evicted; None when there is none (or it no longer fits)."""
        evicted = self.host.take_if(record.name, record.version, EvictedTuner)
        if evicted is None:
            return None
        tuner = evicted.tuner
        try:
            self._make_room(tuner.nbytes, record.name, deadline)  # reserved: settled by add() or unreserve()
        except ResidencyError:  # no room in time: it stays in the host tier for the next try
            self.host.put(record.name, record.version, evicted, getattr(evicted.kept, "nbytes", tuner.nbytes))
            raise
        with self._placement:
            nbytes = SERVED_KINDS[record.kind].reinstall(self.runtime, record.name, evicted.kept,
                                                         replace(tuner, module=None, nbytes=0))
            if nbytes is None:
                self.resident.unreserve(tuner.nbytes)
                return None
            loaded = replace(tuner, nbytes=nbytes)
            self._add_resident(loaded, tuner.nbytes)
        self.failures.pop(record.name, None)
        if self.metrics is not None:
            self.metrics.tuner_load_seconds.observe(time.perf_counter() - start)
        self._report_residency()
        return loaded

    def _load(self, record: TunerRecord, deadline: float | None = None) -> LoadedTuner:
        """Fetch, validate, build and install one version; evicts what must go to make room (waiting for
        requests in flight to let go of theirs until `deadline`)."""
        start = time.perf_counter()
        served = SERVED_KINDS[record.kind]
        reinstalled = self._reinstall(record, deadline, start)
        if reinstalled is not None:
            return reinstalled
        try:
            artifact = self._fetch(record)
            module = build_tuner(artifact)
        except Exception as exc:
            if not is_transient(exc):
                self._failed(record, exc)
            raise
        room = artifact_bytes(artifact)
        self._make_room(room, record.name, deadline)
        with self._placement:
            try:
                tuner = _loaded(record, artifact)
                kept, nbytes = served.install(self.runtime, record.name, module, tuner)
            except Exception as exc:
                self.resident.unreserve(room)
                self._failed(record, exc)
                raise
            loaded = LoadedTuner(**{**vars(tuner), "nbytes": nbytes, "module": kept})
            self._add_resident(loaded, room)
        self.failures.pop(record.name, None)
        if self.metrics is not None:
            self.metrics.tuner_load_seconds.observe(time.perf_counter() - start)
        self._report_residency()
        return loaded

    def _evict(self, name: str) -> None:
        with self._placement:
            gone = self.resident.remove(name)
            if gone is not None:
                SERVED_KINDS[gone.kind].uninstall(self.runtime, name)
        if gone is not None:
            self._report_residency()

    def ensure(self, name: str, deadline: float | None = None) -> LoadedTuner:
        """The newest version of `name` resident (loaded now if it is not; one load however many ask)."""
        ok, why = self.serves(name)
        if not ok:
            raise NotServedError(f"{name}: {why}")
        record = self._records[name]
        served = self.resident.get(name)
        if served is not None and (served.version == record.version or name in self.failures):
            return served
        with self._lock:
            future = self._loading.get(name)
            owner = future is None
            if owner:
                future = self._loading[name] = Future()
                self._waiting.add(name)
        self.report_requests()
        if not owner:
            return future.result()
        try:
            loaded = self._load(record, deadline)
            future.set_result(loaded)
            return loaded
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._loading.pop(name, None)
                self._waiting.discard(name)
            self.report_requests()

    def lease_if_resident(self, names: list[str]) -> Lease | None:
        """Hold `names` for one request if every one is resident now (a hit), else hold nothing and return None."""
        names = list(dict.fromkeys(names))
        if not self.resident.lease_all(names):
            return None
        if self.metrics is not None:
            self.metrics.tuner_hits.inc(len(names))
        lease = Lease(self, names)
        self.report_requests()
        return lease

    async def acquire(self, names: list[str], *, timeout: float) -> Lease:
        """Hold `names` resident for one request, loading the missing ones; ResidencyError when that takes
        longer than `timeout` seconds (the loads go on: the next request finds them resident)."""
        names = list(dict.fromkeys(names))
        deadline = time.monotonic() + timeout
        first = True
        while not self.resident.lease_all(names):
            missing = [n for n in names if n not in self.resident]
            if first and self.metrics is not None:
                self.metrics.tuner_hits.inc(len(names) - len(missing))
                self.metrics.tuner_misses.inc(len(missing))
            first = False
            left = deadline - time.monotonic()
            if left <= 0:
                raise ResidencyError(f"{', '.join(missing)} could not be made resident within {timeout:g} s; retry")
            try:
                await asyncio.wait_for(asyncio.gather(*(asyncio.to_thread(self.ensure, n, deadline) for n in missing)),
                                       left)
            except asyncio.TimeoutError:
                raise ResidencyError(f"loading {', '.join(missing)} took longer than {timeout:g} s; it goes on, "
                                     "retry shortly") from None
        if first and self.metrics is not None:
            self.metrics.tuner_hits.inc(len(names))
        lease = Lease(self, names)
        self.report_requests()
        return lease

    # -- the repository extension and pinning ------------------------------------------------------------

    def load(self, name: str) -> LoadedTuner:
        """Serve `name` here again (after an unload) and make it resident now."""
        if name not in self._records:
            self.sync_one(name)
        if name not in self._records:
            raise NotFoundError(f"no tuner named {name!r} in the tuner store")
        self.unloaded.discard(name)
        self.failures.pop(name, None)
        try:
            return self.ensure(name)
        except NotServedError as exc:
            raise ArtifactError(str(exc), name=name) from None

    def unload(self, name: str) -> None:
        """Stop serving `name` on this replica (the store keeps it) until `load(name)`."""
        if name not in self._records and name not in self.resident:
            raise NotFoundError(f"no tuner named {name!r} on this replica or in the tuner store")
        self.unloaded.add(name)
        self.host.discard(name)
        self._evict(name)

    def state_of(self, name: str) -> tuple[str, str | None]:
        """("READY", None) when a request naming it is served now (resident, or loaded on its first request),
        else ("UNAVAILABLE", why)."""
        ok, why = self.serves(name)
        return ("READY", None) if ok else ("UNAVAILABLE", why)

    def sync_one(self, name: str) -> None:
        try:
            record = self.store.record(name, "latest")
        except NotFoundError:
            record = None
        self._set_record(name, record)

    def pin(self, name: str) -> LoadedTuner:
        if name not in self._records:
            raise NotFoundError(f"no tuner named {name!r} in the tuner store")
        self.resident.pinned.add(name)
        return self.ensure(name)

    def unpin(self, name: str) -> None:
        self.resident.pinned.discard(name)

    def warm_up(self) -> None:
        """At start: pinned tuners first, then the newest, while they fit without evicting anything."""
        order = self._newest_first()
        pinned = [r for r in order if r.name in self.resident.pinned]
        for record in pinned:
            if self.closed.is_set():
                return
            try:
                self.ensure(record.name)
            except Exception as exc:
                log.warning("pinned tuner %s not loaded: %s", record.ref, exc)
        budget = self.resident.budget
        for record in order:
            if self.closed.is_set():
                return
            if record.name in self.resident or not self.serves(record.name)[0]:
                continue
            if budget is not None and self.resident.nbytes + record.size_bytes > budget:
                break
            try:
                self.ensure(record.name)
            except Exception:  # recorded as its problem; requests will say so
                continue

    def _newest_first(self) -> list[TunerRecord]:
        return sorted(self._records.values(), key=lambda r: r.created_at, reverse=True)

    def fill_host_tier(self) -> None:
        """After `warm_up`: the tuners that are not resident, newest first, into the host tier while it has room
        (never evicting), each in the form its next miss reinstalls fastest (a packed head: a copy); as S-LoRA
        keeps every adapter in host memory. Runs at a lower CPU priority than serving."""
        _lower_this_threads_priority()
        try:
            if self.host.budget <= 0:
                return
            for record in self._newest_first():
                if self.closed.is_set():
                    return
                if record.name in self.resident or self.host.holds(record.name, record.version) \
                        or not self.serves(record.name)[0]:
                    continue
                entry = self._host_entry(record)
                if entry is None:
                    continue
                kept, nbytes = entry
                if self.host.nbytes + nbytes > self.host.budget:
                    return  # full: the warm-up never evicts what requests put there
                # newest first, each behind the last: the newest are evicted last
                self.host.put(record.name, record.version, kept, nbytes, least_recent=True)
                if record.name not in self._records:  # deleted meanwhile
                    self.host.discard(record.name)
                self._report_residency()
        finally:
            self.warm_up_done.set()

    def _host_entry(self, record: TunerRecord) -> tuple[object, int] | None:
        """(what the host tier keeps of `record`, its bytes): its packed form when its kind has one and its group
        exists, else the validated artifact; None when it cannot be read now or cannot serve (noted)."""
        try:
            artifact = decode_for(self.runtime, self.store.get_bytes(record.name, record.version))
            pack = SERVED_KINDS[record.kind].pack
            tuner = _loaded(record, artifact)
            packed = pack(self.runtime, build_tuner(artifact), tuner) if pack is not None else None
        except Exception as exc:
            if not is_transient(exc):
                self._failed(record, exc)
            return None
        if packed is None:
            return artifact, artifact_bytes(artifact)
        return EvictedTuner(replace(tuner, nbytes=packed.nbytes), packed), packed.nbytes

    # -- metrics ------------------------------------------------------------------------------------------

    def _report_catalog(self) -> None:
        if self.metrics is not None:
            for kind, records in self._by_kind.items():
                self.metrics.loaded_tuners.labels(kind=kind).set(len(records))

    def _report_residency(self) -> None:
        if self.metrics is not None:
            counts = {kind: 0 for kind in SERVED_KINDS}
            for tuner in self.resident.items():
                counts[tuner.kind] = counts.get(tuner.kind, 0) + 1
            for kind, count in counts.items():
                self.metrics.resident_tuners.labels(kind=kind).set(count)
            self.metrics.resident_bytes.set(self.resident.nbytes)
            self.metrics.host_cache_bytes.set(self.host.nbytes)

    def report_requests(self) -> None:
        """Running (held by requests) and waiting (being loaded) tuners, as one info series."""
        if self.metrics is not None:
            with self._lock:
                waiting = sorted(self._waiting)
            budget = self.resident.budget
            self.metrics.set_tuner_requests(sorted(self.resident.leased()), waiting,
                                            "unlimited" if budget is None else str(budget // (1024 * 1024)))


def _loaded(record: TunerRecord, artifact: TunerArtifact) -> LoadedTuner:
    """What the registry keeps of a tuner version it serves (its bytes are filled in once it is placed)."""
    return LoadedTuner(name=record.name, version=record.version, kind=record.kind, labels=tuple(artifact.labels),
                       created_at=artifact.created_at, metrics=dict(artifact.metrics), nbytes=0)


def _lower_this_threads_priority(niceness: int = 10) -> None:
    """Background work yields the CPU to serving (Linux sets a nice value per thread; elsewhere nothing)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass
