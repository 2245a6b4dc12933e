"""Multi-task bypass kernels and their dispatch.

`reference` holds the pure-PyTorch implementations (any device); fused Triton
kernels live in `triton/` and must match them. `set_backend` forces one path:
"auto" (Triton for CUDA tensors when available, else PyTorch), "torch" or "triton".

Dispatch rules (`use_triton`), applied per call:
- "torch": always the PyTorch reference.
- "auto": Triton when the tensors are on CUDA, Triton is importable, their dtype is
  float32/float16/bfloat16 and no autograd graph is being recorded; otherwise PyTorch.
- "triton": always Triton; CUDA tensors run compiled, CPU tensors only under Triton's
  interpreter (TRITON_INTERPRET=1). Anything else raises ConfigError saying why.
The process-wide setting is `set_backend(...)`, else the environment variable
RESTUNE_KERNEL_BACKEND (read once, on first use), else "auto". Each function also takes `backend=` to override it
for one call (the engine passes its own `kernel_backend`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from restuning.errors import ConfigError, choices
from restuning.kernels import reference
from restuning.kernels.reference import LayerNormSpec
from restuning.kernels.weights import ACTIVATION_OF_TYPE, GroupWeights

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "RESTUNE_KERNEL_BACKEND"  # the process-wide default, e.g. for `restune serve`
# The process-wide backend: set_backend's choice, else RESTUNE_KERNEL_BACKEND read once, else "auto".
_backend: str | None = None


def set_backend(name: str) -> None:
    global _backend
    _backend = check_backend(name)


def get_backend() -> str:
    """The process-wide backend (see above); a call's own `backend=` argument overrides it for that call."""
    global _backend
    if _backend is None:
        name = os.environ.get(ENV_VAR, "").strip() or "auto"
        if name not in BACKENDS:
            raise ConfigError(f"{ENV_VAR}={name!r} is not a kernel backend; choose one of {choices(BACKENDS)}")
        _backend = name
    return _backend


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"unknown kernel backend {name!r}; choose one of {choices(BACKENDS)}")
    return name


def _triton_ops():
    """The Triton kernels: imported on first use, since that imports Triton (half a second a process) and CPU
    runs on the "auto" backend never need it."""
    from restuning.kernels import triton as triton_ops  # lazily: see above

    return triton_ops


def use_triton(tensor: torch.Tensor, backend: str | None = None, *, grad: bool = False) -> bool:
    """Whether a call on `tensor` runs the Triton kernels (see the module docstring for the rules)."""
    name = check_backend(backend) if backend is not None else get_backend()
    if name == "torch":
        return False
    if name == "auto":
        return (tensor.is_cuda and tensor.dtype in _triton_ops().SUPPORTED_DTYPES and not grad
                and _triton_ops().triton_importable())
    # forced
    if not _triton_ops().triton_importable():
        raise ConfigError("kernel backend 'triton' was forced but Triton cannot be imported; install triton or use "
                          "backend 'auto'/'torch'")
    if grad:
        raise ConfigError("the Triton kernels are inference-only; call them under torch.no_grad()/inference_mode() "
                          "or use backend 'torch' to train")
    _triton_ops().check_launchable(tensor)  # CPU without TRITON_INTERPRET=1, or an unsupported dtype: a clear ConfigError
    return True


def _records_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _group_grad(w: GroupWeights, *tensors: torch.Tensor) -> bool:
    return _records_grad(*tensors, w.h_down_w, w.v_down_w, w.up_w, w.up_b, w.lam, w.head_w)


def bypass_group(
    tokens: Sequence[torch.Tensor],  # [x_0 … x_L], each [B, N, D]
    w: GroupWeights,
    *,
    backend: str | None = None,
) -> torch.Tensor:  # [T, B, N, D]
    """b_L [T, B, N, D] of every head in a group from [x_0 … x_L] (each [B, N, D])."""
    if use_triton(tokens[0], backend, grad=_group_grad(w, *tokens)):
        return _triton_ops().bypass_group(tokens, w)
    return reference.bypass_group(tokens, w)


def pool_norms(backbone) -> tuple[LayerNormSpec | None, LayerNormSpec | None] | None:
    """(final norm, post-pool norm) of a backbone as LayerNorm specs, or None when they are
    not both LayerNorm/Identity (then only the bypass is fused and `backbone.pool` runs as is)."""
    model = getattr(backbone, "model", None)
    if model is None or not hasattr(model, "norm") or not hasattr(model, "fc_norm"):
        return None
    try:
        return LayerNormSpec.of(model.norm), LayerNormSpec.of(model.fc_norm)
    except ValueError:
        return None


def group_logits(
    tokens: Sequence[torch.Tensor],  # [x_0 … x_L], each [B, N, D], cut to the group's pooling positions
    w: GroupWeights,
    backbone,
    *,
    backend: str | None = None,
) -> torch.Tensor:  # [B, T, C_max]
    """Logits of every head of a group: bypass, the backbone's final norm + pooling + post-pool norm, heads.

    Torch: reference.bypass_group → backbone.pool → reference.heads_logits (the engine's path).
    Triton: the fused kernels (class token: one launch), or the fused bypass + backbone.pool
    when the backbone's norms are not plain LayerNorms.
    """
    if use_triton(tokens[0], backend, grad=_group_grad(w, *tokens)):
        norms = pool_norms(backbone)
        if norms is not None:
            return _triton_ops().group_logits(tokens, w, *norms)
        b_last = _triton_ops().bypass_group(tokens, w)
    else:
        b_last = reference.bypass_group(tokens, w)
    pooled = backbone.pool(b_last).transpose(0, 1)  # [B, T, D]
    return reference.heads_logits(pooled, w.head_w, w.head_b)


def routed_group_logits(
    tokens: Sequence[torch.Tensor],  # [x_0 … x_L], each [B, N, D], cut to the group's pooling positions
    image: torch.Tensor,  # [P] int64: the image of each (image, task) pair
    slot: torch.Tensor,  # [P] int64: the slot of each pair's tuner
    w,  # restuning.kernels.slots.SlotTensors
    backbone,
    *,
    backend: str | None = None,
) -> torch.Tensor:  # [P, C]
    """Logits of exactly the (image, task) pairs asked for (per-request routing): routed bypass stages (a Triton
    kernel that segments rows by slot on CUDA), then the backbone's norm + pooling and each pair's head."""
    grad = _records_grad(*tokens, w.up_b, w.lam, w.head_w)
    if use_triton(tokens[0], backend, grad=grad):
        return reference.routed_group_logits(tokens, image, slot, w, backbone, stage=_triton_ops().routed_bypass_stage)
    return reference.routed_group_logits(tokens, image, slot, w, backbone)


def routed_adapter(
    x, row_tuner, down_w, down_b, up_w, up_b, activation_kind: str = "gelu", *, backend: str | None = None
) -> torch.Tensor:
    """x [M, D] + each row's own adapter (see reference.routed_adapter)."""
    if use_triton(x, backend, grad=_records_grad(x, down_w, down_b, up_w, up_b)):
        return _triton_ops().routed_adapter(x, row_tuner, down_w, down_b, up_w, up_b, activation_kind)
    return reference.routed_adapter(x, row_tuner, down_w, down_b, up_w, up_b, activation_kind)


__all__ = ["ACTIVATION_OF_TYPE", "BACKENDS", "GroupWeights", "LayerNormSpec", "bypass_group", "check_backend",
           "get_backend", "group_logits", "pool_norms", "routed_adapter", "routed_group_logits", "set_backend",
           "use_triton"]
