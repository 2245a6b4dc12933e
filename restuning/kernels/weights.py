"""Stacked weights of a group of bypass heads: the layout every fan-out kernel reads.

T heads that share tuner activations, tapped layers and pooling are packed so
that one stage of all T heads is a handful of dense/batched GEMMs:

    horizontal down  x_l [B, N, D] @ h_down_w [D, T·r_h]      one GEMM, the input is shared
    vertical down    b   [B, T, N, D] @ v_down_w [T, D, r_v]  batched per head
    up (H and V)     [g_h | g_v] [B, T, N, r_h + r_v] @ up_w [T, r_h + r_v, D]

λ is folded into the up-projection at packing time (up_w = [λ·W_h_up; (1−λ)·W_v_up],
up_b = λ·c_h + (1−λ)·c_v), so a stage is

    b_l = up(act_h(h_down(x_l)), act_v(v_down(b_{l−1}))) + λ·x_l + (1 − λ)·b_{l−1}

Heads with smaller hidden sizes are padded exactly: zero columns/rows for GELU
(GELU(0) = 0) and −inf down-bias for softmax slots (exp(−inf) = 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

ACTIVATION_OF_TYPE = {"adapter": "gelu", "prefix": "softmax", "prompt": "softmax", "none": None}


@dataclass
class GroupWeights:
    names: list[str]
    layers: tuple[int, ...]  # tapped blocks, 1-based; stage s reads x_{layers[s]}
    pooling: str
    h_act: str | None  # "gelu" | "softmax" | None (no horizontal tuner)
    v_act: str | None
    h_rank: int  # padded hidden size r_h (0 when h_act is None)
    v_rank: int
    h_down_w: torch.Tensor | None  # [S, D, T*r_h]
    h_down_b: torch.Tensor | None  # [S, T*r_h]
    v_down_w: torch.Tensor | None  # [S, T, D, r_v]
    v_down_b: torch.Tensor | None  # [S, T, r_v]
    up_w: torch.Tensor | None  # [S, T, r_h + r_v, D]
    up_b: torch.Tensor  # [S, T, D]
    lam: torch.Tensor  # [S, T]
    head_w: torch.Tensor  # [T, D, C_max]
    head_b: torch.Tensor  # [T, C_max]
    num_classes: list[int] = field(default_factory=list)

    @property
    def num_heads(self) -> int:
        return len(self.names)

    @property
    def num_stages(self) -> int:
        return len(self.layers)

    TENSORS = ("h_down_w", "h_down_b", "v_down_w", "v_down_b", "up_w", "up_b", "lam", "head_w", "head_b")

    def to(self, device=None, dtype=None) -> "GroupWeights":
        moved = {k: None if getattr(self, k) is None else getattr(self, k).to(device=device, dtype=dtype)
                 for k in self.TENSORS}
        return replace(self, names=list(self.names), num_classes=list(self.num_classes), **moved)

    def select(self, indices: list[int]) -> "GroupWeights":
        """A group holding only the heads at `indices` (in that order)."""
        idx = torch.tensor(indices, device=self.up_b.device)
        t = self.num_heads

        def per_head(tensor, dim):
            return None if tensor is None else tensor.index_select(dim, idx)

        h_down_w = h_down_b = None
        if self.h_down_w is not None:
            s, d, _ = self.h_down_w.shape
            h_down_w = self.h_down_w.view(s, d, t, self.h_rank).index_select(2, idx).reshape(s, d, -1)
            h_down_b = self.h_down_b.view(s, t, self.h_rank).index_select(1, idx).reshape(s, -1)
        return replace(
            self,
            names=[self.names[i] for i in indices],
            h_down_w=h_down_w,
            h_down_b=h_down_b,
            v_down_w=per_head(self.v_down_w, 1),
            v_down_b=per_head(self.v_down_b, 1),
            up_w=per_head(self.up_w, 1),
            up_b=per_head(self.up_b, 1),
            lam=per_head(self.lam, 1),
            head_w=per_head(self.head_w, 0),
            head_b=per_head(self.head_b, 0),
            num_classes=[self.num_classes[i] for i in indices],
        )
