"""The hot-loaded tuner set: watches the store and swaps in a new immutable snapshot per change.

A batch reads `registry.snapshot` once when it starts and finishes on that tuner
set, whatever happens meanwhile: changes build a complete new snapshot (heads +
packed engine) off the event loop and replace the reference in one assignment.
An artifact that fails validation is logged and counted; the version that was
serving keeps serving.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from restuning.backbones.base import Backbone
from restuning.bypass import ResTuningBypass
from restuning.engine import MultiTaskEngine
from tuner_store.artifact import build_bypass_from_artifact, decode_artifact
from tuner_store.errors import NotFoundError, StoreResetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedTuner:
    name: str
    version: int
    kind: str
    labels: tuple[str, ...]
    created_at: str
    metrics: dict
    module: object  # ResTuningBypass for classification, the diffusion tuner for diffusion

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class TunerSnapshot:
    classifiers: dict[str, LoadedTuner] = field(default_factory=dict)
    diffusion: dict[str, LoadedTuner] = field(default_factory=dict)
    engine: MultiTaskEngine | None = None
    revision: int = 0

    def get(self, name: str) -> LoadedTuner | None:
        return self.classifiers.get(name) or self.diffusion.get(name)


class TunerRegistry:
    def __init__(
        self,
        store,
        backbone: Backbone,
        *,
        device,
        dtype,
        metrics=None,
        diffusion_loader: Callable[[object], object] | None = None,
        diffusion_fingerprint: str | None = None,
    ):
        self.store = store
        self.backbone = backbone
        self.device = device
        self.dtype = dtype
        self.metrics = metrics
        self.diffusion_loader = diffusion_loader
        self.diffusion_fingerprint = diffusion_fingerprint
        self._snapshot = TunerSnapshot()
        self._lock = threading.Lock()  # serialises snapshot builders; readers never take it
        self.last_error: str | None = None
        self.failures: dict[str, str] = {}  # name -> why its newest version is not serving

    @property
    def snapshot(self) -> TunerSnapshot:
        return self._snapshot

    # -- loading ----------------------------------------------------------------------------------

    def _load(self, name: str, version: int) -> LoadedTuner | None:
        """Fetch, validate and build one tuner version; None (and a logged reason) when it cannot serve here."""
        data = self.store.get_bytes(name, version)
        header_kind = None
        try:
            artifact = decode_artifact(data)
            header_kind = artifact.kind
            if artifact.kind == "classification":
                artifact = decode_artifact(data, backbone_fingerprint=self.backbone.fingerprint())
                module: object = build_bypass_from_artifact(artifact, self.backbone.embed_dim)
                module = module.to(device=self.device, dtype=self.dtype).eval()
            elif artifact.kind == "diffusion":
                if self.diffusion_loader is None:
                    return None  # generation is not enabled on this server
                if self.diffusion_fingerprint is not None:
                    artifact = decode_artifact(data, backbone_fingerprint=self.diffusion_fingerprint)
                module = self.diffusion_loader(artifact)
            else:
                return None
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.failures[name] = f"{name}@{version} ({header_kind or 'unknown kind'}) cannot serve here: {reason}"
            log.warning("tuner %s@%s not loaded, keeping the previous version: %s", name, version, reason)
            if self.metrics is not None:
                self.metrics.hotload_failures.inc()
            return None
        self.failures.pop(name, None)
        return LoadedTuner(
            name=name,
            version=int(version),
            kind=artifact.kind,
            labels=tuple(artifact.labels),
            created_at=artifact.created_at,
            metrics=dict(artifact.metrics),
            module=module,
        )

    def _publish(self, classifiers: dict[str, LoadedTuner], diffusion: dict[str, LoadedTuner], revision: int) -> None:
        ordered = dict(sorted(classifiers.items()))
        engine = None
        if ordered:
            heads: dict[str, ResTuningBypass] = {n: t.module for n, t in ordered.items()}
            engine = MultiTaskEngine(self.backbone, heads, device=self.device, dtype=self.dtype)
        self._snapshot = TunerSnapshot(ordered, dict(sorted(diffusion.items())), engine, revision)
        if self.metrics is not None:
            self.metrics.loaded_tuners.labels(kind="classification").set(len(ordered))
            self.metrics.loaded_tuners.labels(kind="diffusion").set(len(diffusion))
            self.metrics.store_revision.set(revision)

    def load_all(self) -> TunerSnapshot:
        """Initial sync: the newest version of every tuner in the store."""
        with self._lock:
            revision = self.store.revision()
            classifiers: dict[str, LoadedTuner] = {}
            diffusion: dict[str, LoadedTuner] = {}
            for name, record in self.store.latest().items():
                loaded = self._load(name, record.version)
                if loaded is None:
                    continue
                (classifiers if loaded.kind == "classification" else diffusion)[name] = loaded
            self._publish(classifiers, diffusion, revision)
            log.info("loaded %d classification and %d diffusion tuners (store revision %d)",
                     len(classifiers), len(diffusion), revision)
            return self._snapshot

    def apply_change(self, name: str, revision: int) -> None:
        """Bring one name up to date with the store (whatever the event was) and publish."""
        start = time.perf_counter()
        with self._lock:
            current = self._snapshot
            classifiers = dict(current.classifiers)
            diffusion = dict(current.diffusion)

            try:
                record = self.store.record(name, "latest")
            except NotFoundError:
                record = None
            served = current.get(name)
            if record is None:
                classifiers.pop(name, None)
                diffusion.pop(name, None)
                self.failures.pop(name, None)
            elif served is None or served.version != record.version:
                loaded = self._load(name, record.version)
                if loaded is not None:
                    classifiers.pop(name, None)
                    diffusion.pop(name, None)
                    (classifiers if loaded.kind == "classification" else diffusion)[name] = loaded
            self._publish(classifiers, diffusion, max(revision, current.revision))
        if self.metrics is not None:
            self.metrics.hotload_seconds.observe(time.perf_counter() - start)

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
