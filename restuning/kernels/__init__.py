"""Multi-task bypass kernels and their dispatch.

`reference` holds the pure-PyTorch implementations (any device); fused Triton
kernels live in `triton/` and must match them. `set_backend` forces one path:
"auto" (Triton for CUDA tensors when available, else PyTorch), "torch" or "triton".
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from restuning.errors import ConfigError, choices
from restuning.kernels import reference
from restuning.kernels.weights import ACTIVATION_OF_TYPE, GroupWeights

BACKENDS = ("auto", "torch", "triton")
_backend = "auto"


def set_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise ConfigError(f"unknown kernel backend {name!r}; choose one of {choices(BACKENDS)}")
    _backend = name


def get_backend() -> str:
    return _backend


def bypass_group(tokens: Sequence[torch.Tensor], w: GroupWeights) -> torch.Tensor:
    """b_L [T, B, N, D] of every head in a group from [x_0 … x_L] (each [B, N, D])."""
    return reference.bypass_group(tokens, w)


def routed_adapter(x, row_tuner, down_w, down_b, up_w, up_b, activation_kind: str = "gelu") -> torch.Tensor:
    """x [M, D] + each row's own adapter (see reference.routed_adapter)."""
    return reference.routed_adapter(x, row_tuner, down_w, down_b, up_w, up_b, activation_kind)


__all__ = ["ACTIVATION_OF_TYPE", "BACKENDS", "GroupWeights", "bypass_group", "get_backend", "routed_adapter",
           "set_backend"]
