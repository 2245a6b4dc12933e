"""Everything one server instance holds: backbone, store, registry, cache, batcher, metrics."""
from __future__ import annotations

import asyncio
import logging
import math
import threading
from dataclasses import dataclass, field

from restuning import kernels
from restuning.backbones import create_backbone
from restuning.backbones.base import Backbone
from restuning.bypass import BypassConfig, expected_state_shapes
from restuning.engine import MultiTaskEngine
from restuning.errors import ConfigError
from restuning.preprocess import ImagePreprocessor
from restuning.torch_threads import DEFAULT_TORCH_THREADS, helper_executor, intra_op, run_on_passing_thread
from server.batcher import DynamicBatcher
from server.feature_cache import FeatureCache
from server.generation import GenerationService
from server.kinds import ServingRuntime
from server.memory import trim_allocator
from server.metrics import ServerMetrics
from server.registry import TunerRegistry
from server.runner import ClassifyRunner
from server.settings import ServerSettings
from server.uploads import upload_executor
from tuner_store.kinds import CLASSIFICATION
from tuner_store.urls import open_store

log = logging.getLogger(__name__)


def check_resident_budget(settings: ServerSettings, stored_sizes: list[int], info) -> None:
    """Refuse a resident budget that cannot hold one tuner: the smallest stored classification tuner, or a default
    `restune train classify` tuner on this backbone (`info`) when the store holds none."""
    if not settings.resident_mb:
        return
    budget = int(settings.resident_mb * 1024 * 1024)
    if stored_sizes:
        smallest, what = min(stored_sizes), "the smallest tuner in the store"
    else:
        config = BypassConfig.create(info, num_classes=10)
        shapes = expected_state_shapes(config, info.embed_dim)
        smallest = sum(math.prod(shape) for shape in shapes.values()) * 4
        what = f"a default tuner on {info.name} (H+V adapters, dim 10, 10 classes)"
    if budget < smallest:
        raise ConfigError(f"--resident-mb {settings.resident_mb:g} holds no tuner: {what} takes "
                          f"{smallest / (1024 * 1024):.3f} MiB; raise --resident-mb, or 0 for no limit")


@dataclass
class ServerState:
    settings: ServerSettings
    backbone: Backbone | None = None
    store: object | None = None
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    registry: TunerRegistry | None = None
    cache: FeatureCache | None = None
    batcher: DynamicBatcher | None = None
    preprocessor: object | None = None
    generator: object | None = None  # the diffusion service, when a diffusion model is configured
    runtime: ServingRuntime | None = None  # the frozen models tuners run on (see server.kinds)
    classify_api: object | None = None  # routers.classify.ClassifyAPI.of(state): one decode thread for /v1 and /v2
    ready: bool = False
    synced: bool = False  # the tuners have been read from the store once (readiness waits for it)
    draining: bool = False  # SIGTERM received: readiness says 503 (server/shutdown.py)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    uploads: object = field(default_factory=upload_executor)  # the upload thread (server/uploads.py)

    async def start(self) -> None:
        s = self.settings
        device, dtype = s.resolved_device(), s.resolved_dtype()
        threads = s.torch_threads or DEFAULT_TORCH_THREADS
        kernels.set_backend(s.kernel_backend)
        # asyncio.to_thread work (tuner loading, uploads, store calls) runs serial torch ops: see torch_threads
        asyncio.get_running_loop().set_default_executor(helper_executor(thread_name_prefix="restune-helper"))
        if self.backbone is None:
            def build() -> Backbone:
                backbone = create_backbone(s.backbone, weights=s.weights, device=device, dtype=dtype)
                backbone.fingerprint()  # computed (and cached) here, not later on the event loop's thread
                return backbone

            self.backbone = await run_on_passing_thread(build, threads=threads)
        info = self.backbone.info
        log.info("backbone %s (%s weights, fingerprint %s…) on %s/%s", info.name, info.weights,
                 self.backbone.fingerprint()[:12], device, str(dtype).replace("torch.", ""))
        if info.weights.startswith("random"):
            log.warning("the backbone has RANDOM weights (%s): fine for demos and tests, not for real images", info.weights)
        if self.store is None:
            self.store = open_store(s.store, log_keep=s.change_log_keep, timeout=s.store_timeout_s)
        self.preprocessor = ImagePreprocessor(info)
        if s.diffusion_model:
            self.generator = await run_on_passing_thread(GenerationService.load, s, device, dtype, threads=threads)
        engine = MultiTaskEngine(self.backbone, device=device, dtype=dtype)
        self.runtime = ServingRuntime(self.backbone, device, dtype, self.generator, engine)
        mib = 1024 * 1024
        self.registry = TunerRegistry(
            self.store, self.runtime, metrics=self.metrics,
            resident_bytes=int(s.resident_mb * mib) if s.resident_mb else None,
            host_cache_bytes=int(s.host_cache_mb * mib), pinned=s.pin,
        )
        try:
            await asyncio.to_thread(self.registry.sync)
            self.synced = True
        except Exception as exc:  # store away at start: serve nothing yet, not ready; retried below
            log.warning("could not read the tuners at start (%s: %s); will retry", type(exc).__name__, exc)
            self._tasks.append(asyncio.get_running_loop().create_task(self._sync_once(), name="restune-sync"))
        check_resident_budget(s, [r.size_bytes for r in self.registry.records(CLASSIFICATION.name).values()],
                              self.backbone.info)
        self.cache = FeatureCache(int(s.feature_cache_mb * 1024 * 1024))
        runner = ClassifyRunner(self.backbone, engine, self.cache, device=device, dtype=dtype,
                                normalize=self.preprocessor.normalize, metrics=self.metrics)
        self.batcher = DynamicBatcher(
            runner.run,
            max_batch_size=s.max_batch_size,
            max_queue_delay_ms=s.max_queue_delay_ms,
            max_queue_size=s.max_queue_size,
            on_depth=self.metrics.queue_depth.set,
            thread_init=intra_op(threads),
        )
        self.batcher.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self.registry.watch_forever(), name="restune-watch"))
        if s.malloc_trim_interval_s:
            self._tasks.append(asyncio.get_running_loop().create_task(self._trim_forever(s.malloc_trim_interval_s),
                                                                      name="restune-malloc-trim"))
        # Ready now; tuners become resident on their first request, and meanwhile pinned then newest in the back,
        # then the host tier fills (on its own thread: it lowers its CPU priority, a pool thread must not).
        self._tasks.append(asyncio.get_running_loop().create_task(self._warm_up(), name="restune-warm-up"))
        self.ready = True

    async def _warm_up(self) -> None:
        await asyncio.to_thread(self.registry.warm_up)
        threading.Thread(target=self.registry.fill_host_tier, name="restune-host-tier", daemon=True).start()

    async def _sync_once(self, retry_seconds: float = 1.0) -> None:
        """Retry the initial full load until it succeeds: until then the replica is not ready, since one that
        never read the store would answer 404 for every task while its peers serve them."""
        while not self.synced:
            await asyncio.sleep(retry_seconds)
            try:
                await asyncio.to_thread(self.registry.sync)
                self.synced = True
            except Exception:  # still away; the watcher logs the store's state
                pass

    async def _trim_forever(self, interval: float) -> None:
        """Give freed memory back to the OS now and then (server.memory explains why)."""
        while True:
            await asyncio.sleep(interval)
            if not await asyncio.to_thread(trim_allocator):
                return

    async def stop(self) -> None:
        self.ready = False
        if self.registry is not None:
            self.registry.closed.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.generator is not None:
            await self.generator.stop()
        self.uploads.shutdown(wait=False, cancel_futures=True)
        if self.store is not None and hasattr(self.store, "close"):
            self.store.close()
