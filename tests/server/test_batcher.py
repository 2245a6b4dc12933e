"""The dynamic batcher on its own: gathering, limits, errors, cancellation and shutdown."""
import asyncio
import threading
import time

import pytest

from server.batcher import DynamicBatcher, QueueFullError


def run(coro):
    return asyncio.run(coro)


def echo_batches(seen: list[list[int]], delay: float = 0.0):
    def run_batch(jobs):
        seen.append([job.payload for job in jobs])
        if delay:
            time.sleep(delay)
        return [job.payload * 10 for job in jobs]

    return run_batch


def test_concurrent_requests_share_batches_up_to_the_cap():
    async def main():
        seen: list[list[int]] = []
        gate = threading.Event()

        def run_batch(jobs):
            gate.wait(5)  # hold the first batch so the rest queue up behind it
            return echo_batches(seen)(jobs)

        batcher = DynamicBatcher(run_batch, max_batch_size=4, max_queue_delay_ms=50, max_queue_size=64)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(9)]
        await asyncio.sleep(0.1)
        gate.set()
        results = await asyncio.gather(*tasks)
        await batcher.stop()
        assert results == [i * 10 for i in range(9)]
        assert sorted(x for b in seen for x in b) == list(range(9))
        assert max(len(b) for b in seen) == 4 and len(seen) >= 3

    run(main())


def test_a_lone_request_waits_at_most_the_queue_delay():
    async def main():
        seen: list[list[int]] = []
        batcher = DynamicBatcher(echo_batches(seen), max_batch_size=8, max_queue_delay_ms=30, max_queue_size=8)
        batcher.start()
        start = time.perf_counter()
        assert await batcher.submit(7) == 70
        waited = time.perf_counter() - start
        await batcher.stop()
        assert seen == [[7]] and 0.025 <= waited < 2.0

    run(main())


def test_full_queue_refuses_at_once():
    async def main():
        gate = threading.Event()

        def blocked(jobs):
            gate.wait(5)
            return [j.payload for j in jobs]

        batcher = DynamicBatcher(blocked, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
        batcher.start()
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.1)  # the model thread holds job 0
        queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError, match="full"):
            await batcher.submit(3)
        gate.set()
        assert await asyncio.gather(first, *queued) == [0, 1, 2]
        await batcher.stop()

    run(main())


def test_errors_reach_their_own_callers():
    async def main():
        def run_batch(jobs):
            if any(j.payload == "crash" for j in jobs):
                raise RuntimeError("whole batch failed")
            return [ValueError(f"bad {j.payload}") if j.payload < 0 else j.payload for j in jobs]

        batcher = DynamicBatcher(run_batch, max_batch_size=4, max_queue_delay_ms=20, max_queue_size=8)
        batcher.start()
        ok, bad = await asyncio.gather(batcher.submit(1), batcher.submit(-1), return_exceptions=True)
        assert ok == 1 and isinstance(bad, ValueError) and "bad -1" in str(bad)
        with pytest.raises(RuntimeError, match="whole batch failed"):
            await batcher.submit("crash")
        assert await batcher.submit(5) == 5  # the model thread survived
        await batcher.stop()

    run(main())


def test_cancelled_requests_are_skipped_and_stop_fails_queued_jobs():
    async def main():
        seen: list[list[int]] = []
        gate = threading.Event()

        def run_batch(jobs):
            gate.wait(5)
            return echo_batches(seen)(jobs)

        batcher = DynamicBatcher(run_batch, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=8)
        batcher.start()
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.1)
        gone = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.05)
        gone.cancel()
        gate.set()
        assert await first == 0 and await kept == 20
        assert [1] not in seen  # the cancelled client's job never reached the model

        gate.clear()
        busy = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(batcher.submit(4))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(batcher.stop())
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError, match="shutting down"):
            await batcher.submit(5)
        gate.set()
        await stopping
        assert await busy == 30  # the batch in flight finished
        with pytest.raises(RuntimeError, match="shutting down"):
            await waiting

    run(main())
