"""Pure-PyTorch multi-task bypass: the reference every fused kernel must match.

Shapes: B batch, N tokens (already cut to the pooling's positions), M = B·N rows,
D embed dim, T heads, r_h / r_v padded hidden sizes, C_max padded class count.
The bypass state is kept head-major, [T, M, D], so every per-head product is a
plain batched GEMM over T with no broadcasting copies.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from restuning.kernels.weights import GroupWeights


def activation(h: torch.Tensor, kind: str) -> torch.Tensor:
    return F.gelu(h) if kind == "gelu" else torch.softmax(h, dim=-1)


def bypass_stage(
    x: torch.Tensor,  # [M, D]      backbone tokens x_l, shared by all heads
    b: torch.Tensor,  # [T, M, D]   bypass state b_{l-1}; [1, M, D] at the first stage (b_0 = x_0 for all)
    w: GroupWeights,
    s: int,
) -> torch.Tensor:  # [T, M, D]
    m = x.shape[0]
    t = w.num_heads
    hidden = []
    if w.h_act is not None:
        h = torch.addmm(w.h_down_b[s], x, w.h_down_w[s])  # [M, T*r_h]: one GEMM for every head
        h = activation(h.view(m, t, w.h_rank), w.h_act)
        hidden.append(h.transpose(0, 1))  # [T, M, r_h]
    if w.v_act is not None:
        v = torch.matmul(b, w.v_down_w[s]) + w.v_down_b[s][:, None, :]  # [T, M, r_v]
        hidden.append(activation(v, w.v_act))
    lam = w.lam[s].view(t, 1, 1)
    if hidden:
        g = hidden[0] if len(hidden) == 1 else torch.cat(hidden, dim=-1)  # [T, M, r_h + r_v]
        out = torch.baddbmm(w.up_b[s][:, None, :], g, w.up_w[s])  # λ·up_h + (1−λ)·up_v + bias
    else:
        out = w.up_b[s][:, None, :].expand(t, m, -1).clone()
    out.addcmul_(b.expand(t, -1, -1), 1 - lam)  # + (1−λ)·b_{l−1}
    out.addcmul_(x.expand(t, -1, -1), lam)  # + λ·x_l
    return out


def bypass_group(
    tokens: Sequence[torch.Tensor],  # [x_0 … x_L], each [B, N, D]
    w: GroupWeights,
) -> torch.Tensor:  # b_L [T, B, N, D], head-major
    bsz, n, d = tokens[0].shape
    b = tokens[0].reshape(1, bsz * n, d)
    for s, layer in enumerate(w.layers):
        b = bypass_stage(tokens[layer].reshape(bsz * n, d), b, w, s)
    return b.expand(w.num_heads, -1, -1).reshape(w.num_heads, bsz, n, d)


def heads_logits(
    pooled: torch.Tensor,  # [B, T, D]
    head_w: torch.Tensor,  # [T, D, C_max]
    head_b: torch.Tensor,  # [T, C_max]
) -> torch.Tensor:  # [B, T, C_max]
    return torch.einsum("btd,tdc->btc", pooled, head_w) + head_b


def routed_adapter(
    x: torch.Tensor,  # [M, D]   rows (tokens) of several samples
    row_tuner: torch.Tensor,  # [M] int64: index of the tuner each row uses, −1 = no tuner (row passes through)
    down_w: torch.Tensor,  # [T, D, r]
    down_b: torch.Tensor,  # [T, r]
    up_w: torch.Tensor,  # [T, r, D]
    up_b: torch.Tensor,  # [T, D]
    activation_kind: str = "gelu",
) -> torch.Tensor:  # [M, D] = x + up(act(down(x))) with each row's own tuner
    """Per-row tuner routing (multi-LoRA style): each sample of a batch may use a different tuner."""
    out = x.clone()
    for t in torch.unique(row_tuner).tolist():
        if t < 0:
            continue
        rows = (row_tuner == t).nonzero(as_tuple=True)[0]
        xs = x.index_select(0, rows)
        h = activation(torch.addmm(down_b[t], xs, down_w[t]), activation_kind)
        out.index_copy_(0, rows, xs + torch.addmm(up_b[t], h, up_w[t]))
    return out


def routed_bypass_stage(
    x: torch.Tensor,  # [B, N, D]  backbone tokens x_l of every image
    image: torch.Tensor,  # [P] int64: the image of each (image, task) pair
    b: torch.Tensor,  # [P, N, D]  bypass state b_{l−1} of every pair
    slot: torch.Tensor,  # [P] int64: the slot (tuner) of each pair
    w,  # restuning.kernels.slots.SlotTensors
    s: int,
    *,
    per_image: int | None = None,  # k when image == [0]*k + [1]*k + … (every image has k pairs, in order)
) -> torch.Tensor:  # [P, N, D]
    """One bypass stage where every (image, task) pair has its own tuner (per-request routing, Punica SGMV
    style): only the pairs a batch asked for are computed, never the union of tasks for every image.

    With `per_image`, the terms that read x (the horizontal down-projection and λ·x) take each image's tokens once
    for its k pairs (one GEMM per image over its pairs' stacked weights, a broadcast for λ·x) instead of copying
    x once per pair: with mean pooling that copy was [P, N, D] per stage, the largest tensor the stage touched."""
    lay = w.layout
    k = per_image
    xs = None if k else x.index_select(0, image)  # [P, N, D]
    hidden = []
    if lay.h_act is not None:
        if k:
            n_img, n_tok, d = x.shape
            r = lay.h_rank
            down = w.h_down_w[s].index_select(0, slot).view(n_img, k, d, r).permute(0, 2, 1, 3).reshape(n_img, d, k * r)
            bias = w.h_down_b[s].index_select(0, slot).view(n_img, 1, k * r)
            h = torch.baddbmm(bias, x, down)  # [B, N, k·r]
            h = h.view(n_img, n_tok, k, r).permute(0, 2, 1, 3).reshape(n_img * k, n_tok, r)
        else:
            h = torch.baddbmm(w.h_down_b[s].index_select(0, slot)[:, None, :], xs, w.h_down_w[s].index_select(0, slot))
        hidden.append(activation(h, lay.h_act))  # [P, N, r_h]
    if lay.v_act is not None:
        v = torch.baddbmm(w.v_down_b[s].index_select(0, slot)[:, None, :], b, w.v_down_w[s].index_select(0, slot))
        hidden.append(activation(v, lay.v_act))  # [P, N, r_v]
    up_b = w.up_b[s].index_select(0, slot)[:, None, :]  # [P, 1, D]
    if hidden:
        g = hidden[0] if len(hidden) == 1 else torch.cat(hidden, dim=-1)
        out = torch.baddbmm(up_b, g, w.up_w[s].index_select(0, slot))  # λ·up_h + (1−λ)·up_v + bias
    else:
        out = up_b.expand_as(b).clone()
    lam = w.lam[s].index_select(0, slot)[:, None, None]
    out.addcmul_(b, 1 - lam)
    if k:
        out.view(x.shape[0], k, *x.shape[1:]).addcmul_(x[:, None], lam.view(x.shape[0], k, 1, 1))
    else:
        out.addcmul_(xs, lam)
    return out


def pairs_per_image(image: torch.Tensor, images: int) -> int | None:
    """k when `image` is [0]*k + [1]*k + … + [images−1]*k (every image has k pairs, grouped by image), else None."""
    pairs = image.shape[0]
    if images == 0 or pairs % images:
        return None
    k = pairs // images
    expected = torch.arange(images, device=image.device).repeat_interleave(k)
    return k if torch.equal(image, expected) else None


def routed_group_logits(
    tokens: Sequence[torch.Tensor],  # [x_0 … x_L], each [B, N, D], cut to the group's pooling positions
    image: torch.Tensor,  # [P] int64: the image of each (image, task) pair
    slot: torch.Tensor,  # [P] int64: the slot of each pair's tuner
    w,  # restuning.kernels.slots.SlotTensors
    backbone,
    *,
    stage=routed_bypass_stage,
) -> torch.Tensor:  # [P, C]
    """Logits of every (image, task) pair: routed bypass stages, the backbone's final norm + pooling, the head."""
    b = tokens[0].index_select(0, image)
    options = {}
    if stage is routed_bypass_stage:
        options["per_image"] = pairs_per_image(image, tokens[0].shape[0])
    for s, layer in enumerate(w.layout.layers):
        b = stage(tokens[layer], image, b, slot, w, s, **options)
    pooled = backbone.pool(b)  # [P, D]
    return torch.baddbmm(w.head_b.index_select(0, slot)[:, None, :], pooled[:, None, :],
                         w.head_w.index_select(0, slot))[:, 0]


@dataclass(frozen=True)
class LayerNormSpec:
    """A frozen LayerNorm over the last dim: (x − mean)/sqrt(var + eps)·weight + bias (weight/bias optional)."""

    weight: torch.Tensor | None  # [D]
    bias: torch.Tensor | None  # [D]
    eps: float

    @classmethod
    def of(cls, module: torch.nn.Module) -> "LayerNormSpec | None":
        """The spec of an nn.LayerNorm over one dim, None for nn.Identity; ValueError for anything else."""
        if isinstance(module, torch.nn.Identity):
            return None
        if isinstance(module, torch.nn.LayerNorm) and len(module.normalized_shape) == 1:
            return cls(module.weight, module.bias, float(module.eps))
        raise ValueError(f"not a LayerNorm over the last dim or Identity: {type(module).__name__}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


def norm_pool_logits(
    b_last: torch.Tensor,  # [T, B, N, D]  bypass output, cut to the pooling's token positions
    norm1: LayerNormSpec | None,  # the backbone's final norm (per token), None = identity
    norm2: LayerNormSpec | None,  # its post-pool norm (timm fc_norm), None = identity
    head_w: torch.Tensor,  # [T, D, C_max]
    head_b: torch.Tensor,  # [T, C_max]
) -> torch.Tensor:  # [B, T, C_max]
    """Final norm, pooling (class token when N = 1, else mean), post-pool norm and every task head.

    Equals `heads_logits(backbone.pool(b_last).transpose(0, 1), head_w, head_b)` for a backbone
    whose final_norm / post_pool_norm are these LayerNorms (or identities).
    """
    normed = norm1(b_last) if norm1 is not None else b_last
    pooled = normed[..., 0, :] if normed.shape[-2] == 1 else normed.mean(dim=-2)  # [T, B, D]
    if norm2 is not None:
        pooled = norm2(pooled)
    return heads_logits(pooled.transpose(0, 1), head_w, head_b)
