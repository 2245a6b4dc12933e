"""Slot-packed weights of a group of bypass heads: one slot per tuner, written one slot at a time.

A group holds the heads that share tuner activations, tapped layers and pooling. Its tensors have a capacity
K of slots that grows by doubling; adding, replacing or evicting a tuner writes only its own slot, so the cost
does not grow with the number of tuners. Per slot k:

    h_down_w [S, K, D, r_h]   h_down_b [S, K, r_h]      horizontal down-projection, stage s
    v_down_w [S, K, D, r_v]   v_down_b [S, K, r_v]      vertical down-projection
    up_w     [S, K, r_h + r_v, D]                        [λ·W_h_up; (1−λ)·W_v_up]: λ folded in
    up_b     [S, K, D]                                   λ·c_h + (1−λ)·c_v
    lam      [S, K]
    head_w   [K, D, C]        head_b [K, C]              the task head, padded to C classes

Smaller hidden sizes and class counts are padded exactly (zero for GELU, −inf down-bias for softmax slots,
zero head columns that are cut off). A head with a larger hidden size or more classes than the group holds
re-lays the group out once (amortised like the doubling).

Readers never see a slot being written: a new tuner version is written to a free slot and published by
swapping the name → slot map, and a slot that was published is reused only after every batch that could
still read it has finished (`SlotPool` in restuning.engine keeps that bookkeeping).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from restuning.kernels.weights import ACTIVATION_OF_TYPE, GroupWeights

TENSORS = ("h_down_w", "h_down_b", "v_down_w", "v_down_b", "up_w", "up_b", "lam", "head_w", "head_b")


@dataclass(frozen=True)
class SlotLayout:
    """What every slot of a group holds; heads with the same key share a group."""

    layers: tuple[int, ...]  # tapped blocks, 1-based; stage s reads x_{layers[s]}
    pooling: str
    h_act: str | None  # "gelu" | "softmax" | None (no horizontal tuner)
    v_act: str | None
    h_rank: int  # padded hidden sizes (0 without that tuner)
    v_rank: int
    classes: int  # padded class count C
    embed_dim: int

    @property
    def num_stages(self) -> int:
        return len(self.layers)


def layout_of(head, embed_dim: int) -> SlotLayout:
    """The smallest layout that holds one head."""
    c = head.config
    h_act, v_act = ACTIVATION_OF_TYPE[c.horizontal.type], ACTIVATION_OF_TYPE[c.vertical.type]
    return SlotLayout(layers=c.layers, pooling=c.pooling, h_act=h_act, v_act=v_act,
                      h_rank=c.horizontal.dim if h_act else 0, v_rank=c.vertical.dim if v_act else 0,
                      classes=c.num_classes, embed_dim=embed_dim)


def group_key(layout: SlotLayout) -> tuple:
    """Heads whose layouts differ only in sizes share a group (sizes are padded)."""
    return (layout.h_act, layout.v_act, layout.layers, layout.pooling, layout.embed_dim)


def covering(a: SlotLayout, b: SlotLayout) -> SlotLayout:
    """The layout that holds both."""
    return replace(a, h_rank=max(a.h_rank, b.h_rank), v_rank=max(a.v_rank, b.v_rank), classes=max(a.classes, b.classes))


@dataclass
class SlotTensors:
    layout: SlotLayout
    h_down_w: torch.Tensor | None
    h_down_b: torch.Tensor | None
    v_down_w: torch.Tensor | None
    v_down_b: torch.Tensor | None
    up_w: torch.Tensor | None
    up_b: torch.Tensor
    lam: torch.Tensor
    head_w: torch.Tensor
    head_b: torch.Tensor

    @property
    def capacity(self) -> int:
        return self.lam.shape[1]

    @classmethod
    def empty(cls, layout: SlotLayout, capacity: int, *, device, dtype) -> "SlotTensors":
        s, d, rh, rv = layout.num_stages, layout.embed_dim, layout.h_rank, layout.v_rank

        def zeros(*shape):
            return torch.zeros(*shape, device=device, dtype=dtype)

        def down_bias(act, rank):
            # softmax padding: exp(−inf) = 0 keeps unused slots out of the normalisation
            return torch.full((s, capacity, rank), -math.inf if act == "softmax" else 0.0, device=device, dtype=dtype)

        return cls(
            layout=layout,
            h_down_w=zeros(s, capacity, d, rh) if rh else None,
            h_down_b=down_bias(layout.h_act, rh) if rh else None,
            v_down_w=zeros(s, capacity, d, rv) if rv else None,
            v_down_b=down_bias(layout.v_act, rv) if rv else None,
            up_w=zeros(s, capacity, rh + rv, d) if rh + rv else None,
            up_b=zeros(s, capacity, d),
            lam=zeros(s, capacity),
            head_w=zeros(capacity, d, layout.classes),
            head_b=zeros(capacity, layout.classes),
        )

    def relaid(self, layout: SlotLayout, capacity: int) -> "SlotTensors":
        """A copy with a larger layout and/or capacity; every slot keeps its content (padded exactly)."""
        out = SlotTensors.empty(layout, capacity, device=self.lam.device, dtype=self.lam.dtype)
        old, k = self.layout, self.capacity
        rh, rv = old.h_rank, old.v_rank
        if rh:
            out.h_down_w[:, :k, :, :rh] = self.h_down_w
            out.h_down_b[:, :k, :rh] = self.h_down_b
            out.up_w[:, :k, :rh] = self.up_w[:, :, :rh]
        if rv:
            out.v_down_w[:, :k, :, :rv] = self.v_down_w
            out.v_down_b[:, :k, :rv] = self.v_down_b
            out.up_w[:, :k, layout.h_rank:layout.h_rank + rv] = self.up_w[:, :, rh:]
        out.up_b[:, :k] = self.up_b
        out.lam[:, :k] = self.lam
        out.head_w[:k, :, :old.classes] = self.head_w
        out.head_b[:k, :old.classes] = self.head_b
        return out

    def nbytes_per_slot(self) -> int:
        return sum(t[0].numel() * t.element_size() if name in ("head_w", "head_b") else t[:, 0].numel() * t.element_size()
                   for name in TENSORS if (t := getattr(self, name)) is not None)

    @torch.no_grad()
    def write(self, slot: int, head) -> None:
        """Pack one head into `slot` (in this group's dtype and device); nothing else is touched."""
        lay = self.layout
        f64, d = torch.float64, lay.embed_dim
        rh, rv = lay.h_rank, lay.v_rank
        lambdas = head.lambdas.detach().to(f64)
        up_b = torch.zeros(lay.num_stages, d, dtype=f64)
        up_w = torch.zeros(lay.num_stages, rh + rv, d, dtype=f64) if rh + rv else None
        h_w = torch.zeros(lay.num_stages, d, rh, dtype=f64) if rh else None
        h_b = torch.full((lay.num_stages, rh), -math.inf if lay.h_act == "softmax" else 0.0, dtype=f64) if rh else None
        v_w = torch.zeros(lay.num_stages, d, rv, dtype=f64) if rv else None
        v_b = torch.full((lay.num_stages, rv), -math.inf if lay.v_act == "softmax" else 0.0, dtype=f64) if rv else None
        for s, (_, horizontal, vertical) in enumerate(head.stages()):
            lam = lambdas[s]
            if rh:
                form = horizontal.two_layer_form()
                r = form.down_weight.shape[1]
                h_w[s, :, :r] = form.down_weight.detach().to(f64)
                h_b[s, :r] = form.down_bias.detach().to(f64)
                up_w[s, :r] = lam * form.up_weight.detach().to(f64)
                up_b[s] += lam * form.up_bias.detach().to(f64)
            if rv:
                form = vertical.two_layer_form()
                r = form.down_weight.shape[1]
                v_w[s, :, :r] = form.down_weight.detach().to(f64)
                v_b[s, :r] = form.down_bias.detach().to(f64)
                up_w[s, rh:rh + r] = (1 - lam) * form.up_weight.detach().to(f64)
                up_b[s] += (1 - lam) * form.up_bias.detach().to(f64)
        c = head.config.num_classes
        head_w = torch.zeros(d, lay.classes, dtype=f64)
        head_b = torch.zeros(lay.classes, dtype=f64)
        head_w[:, :c] = head.head.weight.detach().to(f64).t()
        head_b[:c] = head.head.bias.detach().to(f64)
        for name, value in (("h_down_w", h_w), ("h_down_b", h_b), ("v_down_w", v_w), ("v_down_b", v_b),
                            ("up_w", up_w), ("up_b", up_b), ("lam", lambdas)):
            target = getattr(self, name)
            if target is not None:
                target[:, slot].copy_(value)
        self.head_w[slot].copy_(head_w)
        self.head_b[slot].copy_(head_b)

    def read(self, slot: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """A copy of one slot's content (e.g. for a host tier): name -> [S, ...] or, for the head, [...]."""
        return {name: (t[slot] if name in ("head_w", "head_b") else t[:, slot]).to(device, copy=True)
                for name in TENSORS if (t := getattr(self, name)) is not None}

    def write_copy(self, slot: int, content: dict[str, torch.Tensor]) -> None:
        """Put back what `read` copied out of a slot of this same layout: copies only, no packing."""
        for name, value in content.items():
            target = getattr(self, name)
            (target[slot] if name in ("head_w", "head_b") else target[:, slot]).copy_(value)

    def dense(self, slots: list[int], names: list[str], num_classes: list[int]) -> GroupWeights:
        """The heads in `slots` in the stacked layout of the fused fan-out kernels (kernels.weights)."""
        lay = self.layout
        idx = torch.tensor(slots, device=self.lam.device)
        s, t, d = lay.num_stages, len(slots), lay.embed_dim

        def pick(tensor, dim):
            return None if tensor is None else tensor.index_select(dim, idx)

        h_down_w = h_down_b = None
        if lay.h_rank:
            h_down_w = pick(self.h_down_w, 1).permute(0, 2, 1, 3).reshape(s, d, t * lay.h_rank)
            h_down_b = pick(self.h_down_b, 1).reshape(s, t * lay.h_rank)
        return GroupWeights(
            names=list(names), layers=lay.layers, pooling=lay.pooling, h_act=lay.h_act, v_act=lay.v_act,
            h_rank=lay.h_rank, v_rank=lay.v_rank, h_down_w=h_down_w, h_down_b=h_down_b,
            v_down_w=pick(self.v_down_w, 1), v_down_b=pick(self.v_down_b, 1), up_w=pick(self.up_w, 1),
            up_b=pick(self.up_b, 1), lam=pick(self.lam, 1), head_w=pick(self.head_w, 0),
            head_b=pick(self.head_b, 0), num_classes=list(num_classes),
        )
