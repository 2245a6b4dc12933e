"""torchrun support: the same trainer runs as one process or as one rank of many.

`torchrun --nproc_per_node=N -m restune train classify …` sets RANK / WORLD_SIZE / LOCAL_RANK; the
trainer then joins the process group (NCCL on CUDA, gloo on the CPU), shards the data with a
DistributedSampler, averages gradients with DistributedDataParallel and lets only rank 0 print
progress, write checkpoints and artifacts, and push.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(device: str) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; a plain run gets DistInfo()."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
        log.info("joined the %s process group: rank %d of %d", backend, rank, world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def resolve_device(name: str, dist_local_rank: int | None = None) -> str:
    """'auto' -> cuda (this rank's GPU under torchrun) when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and env_world_size() > 1:
        local = dist_local_rank if dist_local_rank is not None else int(os.environ.get("LOCAL_RANK", "0"))
        name = f"cuda:{local}"
    return name
