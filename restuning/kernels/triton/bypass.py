"""Launchers of the fused bypass kernels; each matches a function of `reference.py`.

- `bypass_stage`    ↔ reference.bypass_stage           one stage, all T heads, one launch
- `bypass_group`    ↔ reference.bypass_group           all stages: one launch ("stack") or S ("stage")
- `group_logits`    ↔ reference.norm_pool_logits(reference.bypass_group(...))
                      class token: ONE launch from the stacked features to the logits;
                      mean pooling: stack kernel summing b_L per sample + the norm/head kernel.
- `norm_pool_logits`↔ reference.norm_pool_logits       final norm + pooling + post-pool norm + heads
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from restuning.errors import ConfigError
from restuning.kernels.reference import LayerNormSpec
from restuning.kernels.triton._runtime import (
    act_code,
    check_launchable,
    dot_flags,
    kernel_module,
    next_pow2,
    rank_block,
    row_blocks,
)
from restuning.kernels.weights import GroupWeights

MODES = ("stack", "stage")
_default_mode = "stack"


@contextlib.contextmanager
def bypass_mode(mode: str):
    """Within the block, calls without `mode=` use this one ("stack": one launch for the layer
    stack, "stage": one launch per stage) — for benchmarks comparing the two through the engine."""
    global _default_mode
    if mode not in MODES:
        raise ConfigError(f"unknown bypass kernel mode {mode!r}; choose one of {', '.join(MODES)}")
    previous, _default_mode = _default_mode, mode
    try:
        yield
    finally:
        _default_mode = previous


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _c(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _stage_weights(w: GroupWeights, s: int | None) -> dict:
    """Weight tensors of stage s (or of every stage, s=None), contiguous; absent tuners get a dummy."""
    pick = (lambda t: None if t is None else _c(t[s])) if s is not None else _c
    out = {k: pick(getattr(w, k)) for k in ("h_down_w", "h_down_b", "v_down_w", "v_down_b", "up_w", "up_b", "lam")}
    dummy = out["up_b"]
    return {k: (dummy if v is None else v) for k, v in out.items()}


def _stride(t: torch.Tensor, dim: int, present: bool) -> int:
    return t.stride(dim) if present else 0


def _check_group(x: torch.Tensor, w: GroupWeights) -> None:
    if x.dtype != w.up_b.dtype:
        raise ConfigError(f"features are {x.dtype} but the head group's weights are {w.up_b.dtype}")
    if x.shape[-1] != w.up_b.shape[-1]:
        raise ConfigError(f"features have width {x.shape[-1]}, the head group expects {w.up_b.shape[-1]}")


def bypass_stage(
    x: torch.Tensor,  # [M, D]     x_l, shared by all heads
    b: torch.Tensor,  # [T, M, D] or [1, M, D]  b_{l-1}
    w: GroupWeights,
    s: int,
    *,
    blocks: dict | None = None,
) -> torch.Tensor:  # [T, M, D]
    """One stage of all T heads in one launch; matches reference.bypass_stage."""
    _check_group(x, w)
    interpret = check_launchable(x, b, w.up_b)
    mod = kernel_module(interpret)
    m, d = x.shape
    t = w.num_heads
    x, b = x.contiguous(), b.contiguous()
    if b.shape[1:] != (m, d) or b.shape[0] not in (1, t):
        raise ConfigError(f"bypass state has shape {list(b.shape)}, expected [{t} or 1, {m}, {d}]")
    out = torch.empty((t, m, d), device=x.device, dtype=x.dtype)
    p = _stage_weights(w, s)
    has_h, has_v = w.h_act is not None, w.v_act is not None
    bl = row_blocks(m, d, interpret, blocks)
    grid = (t, triton_cdiv(m, bl.block_m))
    mod._bypass_stage_kernel[grid](
        x,
        b, b.stride(0) if b.shape[0] > 1 else 0,
        out, out.stride(0),
        d,
        p["h_down_w"], _stride(p["h_down_w"], 0, has_h),
        p["h_down_b"],
        p["v_down_w"], _stride(p["v_down_w"], 0, has_v), _stride(p["v_down_w"], 1, has_v),
        p["v_down_b"], _stride(p["v_down_b"], 0, has_v),
        p["up_w"], _stride(p["up_w"], 0, has_h or has_v), _stride(p["up_w"], 1, has_h or has_v),
        p["up_b"], p["up_b"].stride(0),
        p["lam"],
        m, d, w.h_rank, w.v_rank,
        H_ACT=act_code(w.h_act), V_ACT=act_code(w.v_act), BLOCK_M=bl.block_m,
        R_H=rank_block(w.h_rank), R_V=rank_block(w.v_rank), BLOCK_K=bl.block_k, BLOCK_N=bl.block_n,
        num_warps=bl.num_warps, **dot_flags(x.dtype, interpret),
    )
    return out


def _norm_args(spec: LayerNormSpec | None, d: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    if spec is None:
        return like, like, 0.0
    weight = spec.weight if spec.weight is not None else torch.ones(d, device=like.device)
    bias = spec.bias if spec.bias is not None else torch.zeros(d, device=like.device)
    return weight.contiguous(), bias.contiguous(), spec.eps


def _epilogue_blocks(d: int, c: int, rows: int, interpret: bool) -> dict:
    """Norm/head tiles: BLOCK_R whole rows (BLOCK_D) for the norms, [BLOCK_R, HEAD_K, BLOCK_C] GEMV tiles."""
    block_d = max(16, next_pow2(d))
    if interpret:  # few programs, big numpy blocks
        return {"BLOCK_R": min(max(1, next_pow2(rows)), 64), "BLOCK_D": block_d, "HEAD_K": block_d,
                "BLOCK_C": max(16, next_pow2(c))}
    return {"BLOCK_R": 4, "BLOCK_D": block_d, "HEAD_K": 64, "BLOCK_C": 16}


def pool_dummy(like: torch.Tensor) -> torch.Tensor:
    return torch.empty((1, 1), device=like.device, dtype=torch.float32)


def _launch_stack(
    tokens: Sequence[torch.Tensor],  # [x_0 … x_L], each [B, N, D]
    w: GroupWeights,
    *,
    epilogue: int,
    norm1: LayerNormSpec | None = None,
    norm2: LayerNormSpec | None = None,
    blocks: dict | None = None,
):
    x0 = tokens[0]
    _check_group(x0, w)
    bsz, n, d = x0.shape
    m, t, s_count = bsz * n, w.num_heads, w.num_stages
    interpret = check_launchable(x0, *(tokens[layer] for layer in w.layers), w.up_b)
    mod = kernel_module(interpret)
    xs = torch.stack([x0] + [tokens[layer] for layer in w.layers]).reshape(s_count + 1, m, d)  # [S+1, M, D]
    state = torch.empty((min(s_count, 2), t, m, d), device=x0.device, dtype=x0.dtype)  # [2, T, M, D]
    p = _stage_weights(w, None)
    has_h, has_v = w.h_act is not None, w.v_act is not None
    has_up = has_h or has_v
    pooled = logits = None
    dummy = p["up_b"]
    if epilogue == 2:
        pooled = torch.zeros((t, bsz, d), device=x0.device, dtype=torch.float32)  # [T, B, D]
    if epilogue == 1:
        logits = torch.empty((bsz, t, w.head_w.shape[-1]), device=x0.device, dtype=x0.dtype)  # [B, T, C]
    n1w, n1b, eps1 = _norm_args(norm1, d, dummy)
    n2w, n2b, eps2 = _norm_args(norm2, d, dummy)
    head_w, head_b = w.head_w.contiguous(), w.head_b.contiguous()
    bl = row_blocks(m, d, interpret, blocks)
    epi_blocks = _epilogue_blocks(d, head_w.shape[-1], bl.block_m, interpret)
    epi_blocks["BLOCK_R"] = min(epi_blocks["BLOCK_R"], bl.block_m)
    scratch = torch.empty((t, m, d), device=x0.device, dtype=torch.float32) if epilogue == 1 else pool_dummy(x0)
    grid = (t, triton_cdiv(m, bl.block_m))
    pool_arg = pooled if pooled is not None else dummy
    logit_arg = logits if logits is not None else dummy
    mod._bypass_stack_kernel[grid](
        xs, xs.stride(0),
        state, state.stride(0), state.stride(1),
        d,
        p["h_down_w"], _stride(p["h_down_w"], 0, has_h), _stride(p["h_down_w"], 1, has_h),
        p["h_down_b"], _stride(p["h_down_b"], 0, has_h),
        p["v_down_w"], _stride(p["v_down_w"], 0, has_v), _stride(p["v_down_w"], 1, has_v),
        _stride(p["v_down_w"], 2, has_v),
        p["v_down_b"], _stride(p["v_down_b"], 0, has_v), _stride(p["v_down_b"], 1, has_v),
        p["up_w"], _stride(p["up_w"], 0, has_up), _stride(p["up_w"], 1, has_up), _stride(p["up_w"], 2, has_up),
        p["up_b"], p["up_b"].stride(0), p["up_b"].stride(1),
        p["lam"], p["lam"].stride(0),
        pool_arg, pooled.stride(0) if pooled is not None else 0, pooled.stride(1) if pooled is not None else 0,
        logit_arg, logits.stride(0) if logits is not None else 0, logits.stride(1) if logits is not None else 0,
        n1w, n1b, eps1,
        n2w, n2b, eps2,
        head_w, head_w.stride(0), head_w.stride(1),
        head_b, head_b.stride(0),
        scratch, scratch.stride(0),
        m, d, s_count, w.h_rank, w.v_rank, n, head_w.shape[-1],
        H_ACT=act_code(w.h_act), V_ACT=act_code(w.v_act), EPI=epilogue,
        NORM1=norm1 is not None, NORM2=norm2 is not None,
        BLOCK_M=bl.block_m, R_H=rank_block(w.h_rank), R_V=rank_block(w.v_rank), BLOCK_K=bl.block_k,
        BLOCK_N=bl.block_n, **epi_blocks,
        num_warps=bl.num_warps, **dot_flags(x0.dtype, interpret),
    )
    b_last = state[(s_count - 1) % 2].view(t, bsz, n, d)
    return b_last, pooled, logits


def bypass_group(
    tokens: Sequence[torch.Tensor],  # [x_0 … x_L], each [B, N, D]
    w: GroupWeights,
    *,
    mode: str | None = None,
    blocks: dict | None = None,
) -> torch.Tensor:  # b_L [T, B, N, D]
    """Every stage of every head; matches reference.bypass_group.

    mode "stack" (default): one launch for the whole layer stack; "stage": one launch per stage.
    """
    mode = mode or _default_mode
    if mode == "stage":
        bsz, n, d = tokens[0].shape
        b = tokens[0].reshape(1, bsz * n, d)
        for s, layer in enumerate(w.layers):
            b = bypass_stage(tokens[layer].reshape(bsz * n, d), b, w, s, blocks=blocks)
        return b.view(w.num_heads, bsz, n, d)
    if mode != "stack":
        raise ConfigError(f"unknown bypass kernel mode {mode!r}; choose one of {', '.join(MODES)}")
    return _launch_stack(tokens, w, epilogue=0, blocks=blocks)[0]


def norm_pool_logits(
    b_last: torch.Tensor,  # [T, B, N, D]   (last dim contiguous)
    norm1: LayerNormSpec | None,
    norm2: LayerNormSpec | None,
    head_w: torch.Tensor,  # [T, D, C_max]
    head_b: torch.Tensor,  # [T, C_max]
    *,
    scale: float | None = None,  # pooled = scale·Σ_n; default 1/N (mean; the class token when N = 1)
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:  # [B, T, C_max]
    """Final norm + pooling + post-pool norm + every task head, grid (T, cdiv(B, BLOCK_R)).

    Matches reference.norm_pool_logits.
    """
    t, bsz, n, d = b_last.shape
    if b_last.stride(-1) != 1:
        b_last = b_last.contiguous()
    head_w, head_b = head_w.contiguous(), head_b.contiguous()
    interpret = check_launchable(b_last, head_w, head_b)
    mod = kernel_module(interpret)
    c = head_w.shape[-1]
    out = torch.empty((bsz, t, c), device=b_last.device, dtype=out_dtype or head_w.dtype)
    n1w, n1b, eps1 = _norm_args(norm1, d, head_b)
    n2w, n2b, eps2 = _norm_args(norm2, d, head_b)
    scratch = torch.empty((t, bsz, d), device=b_last.device, dtype=torch.float32)  # [T, B, D]
    epi_blocks = _epilogue_blocks(d, c, bsz, interpret)
    mod._norm_pool_head_kernel[(t, triton_cdiv(bsz, epi_blocks["BLOCK_R"]))](
        b_last, b_last.stride(0), b_last.stride(1), b_last.stride(2),
        out, out.stride(0), out.stride(1),
        n1w, n1b, eps1, n2w, n2b, eps2,
        head_w, head_w.stride(0), head_w.stride(1),
        head_b, head_b.stride(0),
        scratch, scratch.stride(0),
        bsz, n, d, c, float(scale if scale is not None else 1.0 / n),
        NORM1=norm1 is not None, NORM2=norm2 is not None, **epi_blocks,
        num_warps=4,
    )
    return out


def group_logits(
    tokens: Sequence[torch.Tensor],  # [x_0 … x_L], each [B, N, D], cut to the group's pooling positions
    w: GroupWeights,
    norm1: LayerNormSpec | None,
    norm2: LayerNormSpec | None,
    *,
    mode: str | None = None,
    blocks: dict | None = None,
) -> torch.Tensor:  # [B, T, C_max]
    """Logits of every head of a group; matches reference.norm_pool_logits(reference.bypass_group(...)).

    stack mode, class token (N = 1): one launch — bypass stack, norms and heads;
    stack mode, mean pooling, identity final norm: the stack kernel sums b_L per sample
    (b_L is never written), then one small norm + head launch;
    otherwise b_L is materialised and pooled by the norm/pool/head kernel.
    """
    mode = mode or _default_mode
    n = tokens[0].shape[1]
    dtype = tokens[0].dtype
    if mode == "stack" and n == 1:
        return _launch_stack(tokens, w, epilogue=1, norm1=norm1, norm2=norm2, blocks=blocks)[2]
    if mode == "stack" and norm1 is None:
        _, pooled, _ = _launch_stack(tokens, w, epilogue=2, blocks=blocks)
        t, bsz, d = pooled.shape
        return norm_pool_logits(pooled.view(t, bsz, 1, d), None, norm2, w.head_w, w.head_b, scale=1.0 / n,
                                out_dtype=dtype)
    b_last = bypass_group(tokens, w, mode=mode, blocks=blocks)
    return norm_pool_logits(b_last, norm1, norm2, w.head_w, w.head_b, out_dtype=dtype)
