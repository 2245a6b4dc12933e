"""Shared pieces of the benchmarks: timing and machine facts (results are written by `bench.results`).

Speed claims are ratios measured inside one run, in one process, with the
candidates interleaved so that drift in the machine hits all of them alike.
"""
from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

import timm
import torch

from restuning.devices import cpu_model


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def device_slug(device: torch.device | str) -> str:
    """A file-name-safe label of the device, e.g. 'nvidia-h100-80gb-hbm3' or 'cpu-2t'."""
    device = torch.device(device)
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu-{torch.get_num_threads()}t"


def machine_info(device: torch.device | str) -> dict:
    return {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "device": device_name(device),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Median wall time in ms of each candidate, run round-robin after warm-up."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in samples.items()}

