"""Fused Triton kernels of the multi-task bypass fan-out (docs/kernels.md, "The multi-task bypass fan-out").

Every op here has a PyTorch twin in `restuning/kernels/reference.py` that it must match
(tests/kernels): the reference is the spec, these are the fast path on CUDA.

    bypass_stage      reference.bypass_stage      one stage, all T heads, one launch
    bypass_group      reference.bypass_group      whole layer stack in one launch (or one per stage)
    group_logits      norm_pool_logits ∘ bypass_group   class token: features → logits in one launch
    norm_pool_logits  reference.norm_pool_logits  final norm + pooling + post-pool norm + task heads
    routed_adapter    reference.routed_adapter    per-sample tuner routing (SGMV style)
    routed_bypass_stage  reference.routed_bypass_stage  one stage of per-request routing: rows by slot

Importing this package does not import Triton's kernels; they load on the first launch,
compiled for CUDA tensors or under Triton's interpreter when TRITON_INTERPRET=1
(which is how CPU tensors run them: tests and CI). See `_runtime.py`.
"""
from restuning.kernels.triton._runtime import SUPPORTED_DTYPES, check_launchable, interpreting, triton_importable
from restuning.kernels.triton.bypass import (
    MODES,
    bypass_group,
    bypass_mode,
    bypass_stage,
    group_logits,
    norm_pool_logits,
)
from restuning.kernels.triton.routed import routed_adapter, routed_bypass_stage

__all__ = [
    "MODES",
    "SUPPORTED_DTYPES",
    "bypass_group",
    "bypass_mode",
    "bypass_stage",
    "check_launchable",
    "group_logits",
    "interpreting",
    "norm_pool_logits",
    "routed_adapter",
    "routed_bypass_stage",
    "triton_importable",
]
