"""Which threads may run multi-threaded torch ops: a server's model thread (and generation), nothing else.

Every thread that has run one parallel torch op keeps an OpenMP team of worker
threads for the rest of its life, and once a process holds more OpenMP threads
than CPUs, libgomp cuts its barrier spin to almost nothing: the backbone's
threads then sleep and wake around every op. Measured on 2 cores (ViT-Tiny,
batch 8): a forward on a second thread while the first kept its team ran ~10%
slower with 8% of the CPU idle. Hence: helper threads go single-threaded before
their first op (their ops stay serial and make no team), and one-off heavy work
at start runs on a thread that exits afterwards, taking its team with it.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# torch's default (the cores, or OMP_NUM_THREADS), read on import before any helper thread sets its own
DEFAULT_TORCH_THREADS = torch.get_num_threads()


def set_thread_count(threads: int) -> None:
    """Intra-op threads of the calling thread."""
    # torch initialises a thread's count lazily, from the count last set by *any* thread, at its first
    # parallel op; querying first does that initialisation now, so the set below is the one that stays
    torch.get_num_threads()
    torch.set_num_threads(threads)


def single_threaded() -> None:
    """Thread initializer for helpers: this thread's torch ops run serially."""
    set_thread_count(1)


def intra_op(threads: int) -> Callable[[], None]:
    """Thread initializer for the compute threads: `threads` intra-op threads."""

    def init() -> None:
        set_thread_count(threads)

    return init


def helper_executor(*, max_workers: int | None = None, thread_name_prefix: str = "restune-helper") -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix,
                              initializer=single_threaded)


def call_on_passing_thread(fn: Callable[..., T], *args: Any, threads: int, name: str = "restune-start") -> T:
    """fn(*args) with `threads` intra-op threads, on a new thread that has ended (with its OpenMP team) on return."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        set_thread_count(threads)
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


async def run_on_passing_thread(fn: Callable[..., T], *args: Any, threads: int, name: str = "restune-start") -> T:
    """`call_on_passing_thread` without blocking the event loop."""
    return await asyncio.to_thread(call_on_passing_thread, fn, *args, threads=threads, name=name)
