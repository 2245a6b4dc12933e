"""Thread discipline helpers: counts per thread, results and errors across the passing thread."""
import asyncio
import threading

import pytest
import torch

from restuning.torch_threads import call_on_passing_thread, helper_executor, run_on_passing_thread


def test_passing_thread_runs_with_its_count_and_ends():
    seen = {}

    def work(x):
        seen["threads"] = torch.get_num_threads()
        seen["thread"] = threading.current_thread()
        return x * 2

    assert call_on_passing_thread(work, 21, threads=2) == 42
    assert seen["threads"] == 2 and seen["thread"] is not threading.current_thread()
    assert not seen["thread"].is_alive()  # gone, and its OpenMP team with it


def test_passing_thread_errors_reach_the_caller():
    def boom():
        raise ValueError("no backbone")

    with pytest.raises(ValueError, match="no backbone"):
        asyncio.run(run_on_passing_thread(boom, threads=1))


def test_helpers_are_single_threaded_and_the_caller_keeps_its_count():
    before = torch.get_num_threads()
    with helper_executor(max_workers=1) as pool:
        assert pool.submit(torch.get_num_threads).result() == 1
    assert torch.get_num_threads() == before
