"""Launcher of the routed adapter kernel (per-sample tuner routing); matches reference.routed_adapter."""
from __future__ import annotations

import torch

from restuning.errors import InputError
from restuning.kernels.triton._runtime import check_launchable, dot_flags, kernel_module, rank_block, row_blocks


def routed_adapter(
    x: torch.Tensor,  # [M, D]   rows (tokens) of several samples
    row_tuner: torch.Tensor,  # [M] int: tuner of each row, −1 = passthrough
    down_w: torch.Tensor,  # [T, D, r]
    down_b: torch.Tensor,  # [T, r]
    up_w: torch.Tensor,  # [T, r, D]
    up_b: torch.Tensor,  # [T, D]
    activation_kind: str = "gelu",
    *,
    blocks: dict | None = None,
) -> torch.Tensor:  # [M, D] = x + up(act(down(x))) with each row's own tuner
    """SGMV-style: rows are grouped by tuner (stable sort + bincount, no host sync besides the
    range check), then one launch with grid (T + 1, cdiv(M, BLOCK_M)) runs every segment."""
    interpret = check_launchable(x, down_w, down_b, up_w, up_b)
    mod = kernel_module(interpret)
    m, d = x.shape
    t, _, r = down_w.shape
    x = x.contiguous()
    route = row_tuner.to(device=x.device, dtype=torch.int64).reshape(-1)
    if route.numel() != m:
        raise InputError(f"row_tuner has {route.numel()} entries for {m} rows")
    if m and (int(route.min()) < -1 or int(route.max()) >= t):
        raise InputError(f"row_tuner entries must lie in [-1, {t - 1}] (−1 = no tuner)")
    counts = torch.bincount(route + 1, minlength=t + 1)  # [T + 1]: segment 0 = passthrough rows
    starts = (torch.cumsum(counts, 0) - counts).to(torch.int32)
    perm = torch.argsort(route, stable=True).to(torch.int32)  # rows grouped by tuner
    out = torch.empty_like(x)
    down_w, down_b, up_w, up_b = (v.contiguous() for v in (down_w, down_b, up_w, up_b))
    bl = row_blocks(m, d, interpret, blocks)
    grid = (t + 1, max(1, -(-m // bl.block_m)))
    mod._routed_adapter_kernel[grid](
        x, x.stride(0), out, out.stride(0), perm, starts, counts.to(torch.int32),
        down_w, down_w.stride(0), down_w.stride(1),
        down_b, down_b.stride(0),
        up_w, up_w.stride(0), up_w.stride(1),
        up_b, up_b.stride(0),
        d, r,
        ACT=1 if activation_kind == "gelu" else 2, BLOCK_M=bl.block_m, R=rank_block(r), BLOCK_K=bl.block_k,
        BLOCK_N=bl.block_n, num_warps=bl.num_warps, **dot_flags(x.dtype, interpret),
    )
    return out
