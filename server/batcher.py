"""Dynamic batching: gather concurrent requests, run them through the model as one batch.

The queue is bounded: when it is full a request is refused at once (the HTTP
layer answers 503 with Retry-After) instead of waiting without limit. The model
runs on one dedicated thread, so the event loop keeps accepting and decoding
requests while a batch computes; those requests form the next batch.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFullError(Exception):
    """The batch queue is at capacity."""


@dataclass
class Job:
    payload: Any
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.perf_counter)


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
    ):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.on_batch = on_batch
        self.on_depth = on_depth
        self._queue: asyncio.Queue[Job] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restune-model")
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue_size)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="restune-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, payload: Any) -> Any:
        if self._queue is None:
            raise RuntimeError("batcher not started")
        job = Job(payload, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFullError(f"the request queue is full ({self.max_queue_size} waiting)") from None
        self._report_depth()
        return await job.future

    def _report_depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self.depth)

    async def _collect(self) -> list[Job]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_delay
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._report_depth()
            live = [job for job in batch if not job.future.done()]  # skip clients that went away
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, live)
            except Exception as exc:  # the whole batch failed: every caller gets the error
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(live, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
