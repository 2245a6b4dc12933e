"""Dynamic batching: gather concurrent requests, run them through the model as one batch.

The queue is bounded: when it is full a request is refused at once (the HTTP
layer answers 503 with Retry-After) instead of waiting without limit.

The model thread pulls its batches from the queue itself. The event loop only
enqueues jobs and settles their futures; it is never between one batch and the
next, so a loop busy parsing or answering requests cannot leave the model idle
(on a small backbone that hand-off gap cost several percent of throughput).
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class QueueFullError(Exception):
    """The batch queue is at capacity."""


@dataclass
class Job:
    payload: Any
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.perf_counter)


_STOP = object()  # sentinel that ends the model thread


def _settle(job: Job, result: Any) -> None:
    """Runs on the job's event loop: hand the result (or error) to the waiting request."""
    if job.future.done():  # the client went away (cancelled) while its batch ran
        return
    if isinstance(result, BaseException):
        job.future.set_exception(result)
    else:
        job.future.set_result(result)


class DynamicBatcher:
    def __init__(
        self,
        run_batch: Callable[[Sequence[Job]], Sequence[Any]],
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue_size: int,
        on_batch: Callable[[int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        thread_init: Callable[[], None] | None = None,
    ):
        if max_batch_size < 1 or max_queue_size < 1 or max_queue_delay_ms < 0:
            raise ValueError("max_batch_size and max_queue_size must be >= 1 and max_queue_delay_ms >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.on_batch = on_batch
        self.on_depth = on_depth
        self.thread_init = thread_init  # runs first on the model thread (e.g. its intra-op thread count)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue_size)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the event loop whose requests wait on results
        self._closing = False

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Start the model thread; call it on the event loop whose requests will be submitted."""
        if self._thread is not None:
            raise RuntimeError("batcher already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._model_loop, name="restune-model", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish the batch in flight, fail every job still queued, end the model thread."""
        if self._thread is None:
            return
        self._closing = True
        pending = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                pending.append(item)
        for job in pending:
            _settle(job, RuntimeError("the server is shutting down"))
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def submit(self, payload: Any) -> Any:
        if self._thread is None:
            raise RuntimeError("batcher not started")
        if self._closing:  # 503 + Retry-After: a load balancer sends the client to another replica
            raise QueueFullError("the server is shutting down")
        job = Job(payload, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(f"the request queue is full ({self.max_queue_size} waiting)") from None
        self._report_depth()
        return await job.future

    def _report_depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self.depth)

    def _collect(self) -> list[Job] | None:
        """Block for a first job, then gather more until the batch is full or the delay has passed."""
        first = self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        deadline = time.perf_counter() + self.max_delay
        while len(batch) < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                self._queue.put(_STOP)  # finish this batch, then stop
                break
            batch.append(item)
        return batch

    def _model_loop(self) -> None:
        if self.thread_init is not None:
            self.thread_init()
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._report_depth()
            live = [job for job in batch if not job.future.done()]  # skip clients that went away
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                results: Sequence[Any] = self.run_batch(live)
                if len(results) != len(live):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} jobs")
            except Exception as exc:  # the whole batch failed: every caller gets the error
                results = [exc] * len(live)
            for job, result in zip(live, results):
                try:
                    self._loop.call_soon_threadsafe(_settle, job, result)
                except RuntimeError:  # the event loop has closed; nobody is waiting
                    pass
