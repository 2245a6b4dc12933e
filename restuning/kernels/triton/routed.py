"""Launchers of the routed kernels (per-sample / per-pair tuner routing, SGMV style): the routed adapter
(matches reference.routed_adapter) and the routed bypass stage (matches reference.routed_bypass_stage)."""
from __future__ import annotations

import torch

from restuning.errors import InputError
from restuning.kernels.triton._runtime import (
    act_code,
    check_launchable,
    dot_flags,
    kernel_module,
    rank_block,
    row_blocks,
)


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


def routed_bypass_stage(
    x: torch.Tensor,  # [B, N, D]  backbone tokens x_l of every image
    image: torch.Tensor,  # [P] int: the image of each (image, task) pair
    b: torch.Tensor,  # [P, N, D]  bypass state of every pair
    slot: torch.Tensor,  # [P] int: the slot of each pair's tuner
    w,  # restuning.kernels.slots.SlotTensors
    s: int,
    *,
    blocks: dict | None = None,
) -> torch.Tensor:  # [P, N, D]
    """One routed bypass stage (matches reference.routed_bypass_stage): rows are grouped by slot (a stable sort
    and a count, no host sync besides the segment count), then one launch runs every segment."""
    lay = w.layout
    tensors = [t for t in (x, b, w.up_b, w.lam, w.h_down_w, w.v_down_w) if t is not None]
    interpret = check_launchable(*tensors)
    mod = kernel_module(interpret)
    bsz, n, d = x.shape
    p = b.shape[0]
    m = p * n
    if image.numel() != p or slot.numel() != p:
        raise InputError(f"{image.numel()} images and {slot.numel()} slots for {p} pairs")
    x2 = x.reshape(bsz * n, d).contiguous()
    b2 = b.reshape(m, d).contiguous()
    offsets = torch.arange(n, device=x.device, dtype=torch.int64)
    x_row = (image.to(device=x.device, dtype=torch.int64)[:, None] * n + offsets[None, :]).reshape(-1)
    row_slot = slot.to(device=x.device, dtype=torch.int64).repeat_interleave(n)
    seg_slot, inverse = torch.unique(row_slot, return_inverse=True)
    counts = torch.bincount(inverse, minlength=seg_slot.numel())
    starts = (torch.cumsum(counts, 0) - counts).to(torch.int32)
    perm = torch.argsort(inverse, stable=True).to(torch.int32)
    out = torch.empty_like(b2)
    rh, rv = lay.h_rank, lay.v_rank
    dummy = w.up_b[s]  # stands in for an absent tuner's pointers (never read: its ACT is 0)
    hw = w.h_down_w[s].contiguous() if rh else dummy
    hb = w.h_down_b[s].contiguous() if rh else dummy
    vw = w.v_down_w[s].contiguous() if rv else dummy
    vb = w.v_down_b[s].contiguous() if rv else dummy
    uw = w.up_w[s].contiguous() if rh + rv else dummy
    ub, lam = w.up_b[s].contiguous(), w.lam[s].contiguous()
    bl = row_blocks(m, d, interpret, blocks)
    grid = (max(1, seg_slot.numel()), max(1, -(-m // bl.block_m)))
    mod._routed_bypass_stage_kernel[grid](
        x2, x2.stride(0), x_row.to(torch.int32), b2, b2.stride(0), out, out.stride(0), perm, starts,
        counts.to(torch.int32), seg_slot.to(torch.int32),
        hw, hw.stride(0), hw.stride(1) if rh else 0,
        hb, hb.stride(0),
        vw, vw.stride(0), vw.stride(1) if rv else 0,
        vb, vb.stride(0),
        uw, uw.stride(0), uw.stride(1) if rh + rv else 0,
        ub, ub.stride(0),
        lam,
        d, rh, rv,
        H_ACT=act_code(lay.h_act), V_ACT=act_code(lay.v_act), BLOCK_M=bl.block_m, RH=rank_block(max(rh, 1)),
        RV=rank_block(max(rv, 1)), BLOCK_K=bl.block_k, BLOCK_N=bl.block_n, num_warps=bl.num_warps,
        **dot_flags(x.dtype, interpret),
    )
    return out.view(p, n, d)
