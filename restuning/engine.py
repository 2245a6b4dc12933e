"""Multi-task fan-out: one backbone pass, then every bypass head at once.

Heads are grouped by (horizontal activation, vertical activation, tapped layers,
pooling); inside a group their weights are stacked (`kernels.weights`) so each
layer runs as a few dense or batched GEMMs over all heads, never a Python loop
over heads inside the layer loop. Each group reads only the token positions its
pooling needs: class-token heads touch one token per layer.

An engine is immutable once built: hot-loading builds a new one and swaps the
reference, so a batch always finishes on the tuner set it started with.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from restuning import kernels
from restuning.backbones.base import Backbone
from restuning.bypass import ResTuningBypass
from restuning.errors import ConfigError, InputError
from restuning.kernels.weights import ACTIVATION_OF_TYPE, GroupWeights


@dataclass(frozen=True)
class GroupKey:
    h_act: str | None
    v_act: str | None
    layers: tuple[int, ...]
    pooling: str


def group_key(head: ResTuningBypass) -> GroupKey:
    c = head.config
    return GroupKey(ACTIVATION_OF_TYPE[c.horizontal.type], ACTIVATION_OF_TYPE[c.vertical.type], c.layers, c.pooling)


def _padded_down(tuner, d: int, rank: int, act: str, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Down-projection padded to `rank` slots: A [D, rank], a [rank]."""
    form = tuner.two_layer_form()
    r = form.down_weight.shape[1]
    a_w = torch.zeros(d, rank, dtype=dtype)
    a_b = torch.full((rank,), -math.inf if act == "softmax" else 0.0, dtype=dtype)
    a_w[:, :r] = form.down_weight.detach().to(dtype)
    a_b[:r] = form.down_bias.detach().to(dtype)
    return a_w, a_b


def _padded_up(tuner, d: int, rank: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    form = tuner.two_layer_form()
    r = form.up_weight.shape[0]
    b_w = torch.zeros(rank, d, dtype=dtype)
    b_w[:r] = form.up_weight.detach().to(dtype)
    return b_w, form.up_bias.detach().to(dtype)


@torch.no_grad()
def pack_group(names: Sequence[str], heads: Sequence[ResTuningBypass], embed_dim: int) -> GroupWeights:
    """Stack T heads of one group into the fan-out layout, in float64 on the CPU (cast by the caller)."""
    key = group_key(heads[0])
    if any(group_key(h) != key for h in heads):
        raise ConfigError("pack_group: every head of a group needs the same activations, layers and pooling")
    d, t, s_count = embed_dim, len(heads), len(key.layers)
    f64 = torch.float64
    h_rank = max(h.config.horizontal.dim for h in heads) if key.h_act else 0
    v_rank = max(h.config.vertical.dim for h in heads) if key.v_act else 0

    h_down_w = torch.zeros(s_count, d, t * h_rank, dtype=f64) if h_rank else None
    h_down_b = torch.zeros(s_count, t * h_rank, dtype=f64) if h_rank else None
    v_down_w = torch.zeros(s_count, t, d, v_rank, dtype=f64) if v_rank else None
    v_down_b = torch.zeros(s_count, t, v_rank, dtype=f64) if v_rank else None
    up_w = torch.zeros(s_count, t, h_rank + v_rank, d, dtype=f64) if h_rank + v_rank else None
    up_b = torch.zeros(s_count, t, d, dtype=f64)
    lam = torch.zeros(s_count, t, dtype=f64)
    c_max = max(h.config.num_classes for h in heads)
    head_w = torch.zeros(t, d, c_max, dtype=f64)
    head_b = torch.zeros(t, c_max, dtype=f64)

    for i, head in enumerate(heads):
        lambdas = head.lambdas.detach().to(f64)
        for s, (_, horizontal, vertical) in enumerate(head.stages()):
            lam_s = lambdas[s]
            lam[s, i] = lam_s
            bias = torch.zeros(d, dtype=f64)
            if h_rank:
                a_w, a_b = _padded_down(horizontal, d, h_rank, key.h_act, f64)
                h_down_w[s, :, i * h_rank : (i + 1) * h_rank] = a_w
                h_down_b[s, i * h_rank : (i + 1) * h_rank] = a_b
                b_w, b_b = _padded_up(horizontal, d, h_rank, f64)
                up_w[s, i, :h_rank] = lam_s * b_w
                bias += lam_s * b_b
            if v_rank:
                a_w, a_b = _padded_down(vertical, d, v_rank, key.v_act, f64)
                v_down_w[s, i] = a_w
                v_down_b[s, i] = a_b
                b_w, b_b = _padded_up(vertical, d, v_rank, f64)
                up_w[s, i, h_rank:] = (1 - lam_s) * b_w
                bias += (1 - lam_s) * b_b
            up_b[s, i] = bias
        c = head.config.num_classes
        head_w[i, :, :c] = head.head.weight.detach().to(f64).t()
        head_b[i, :c] = head.head.bias.detach().to(f64)

    return GroupWeights(
        names=list(names),
        layers=key.layers,
        pooling=key.pooling,
        h_act=key.h_act,
        v_act=key.v_act,
        h_rank=h_rank,
        v_rank=v_rank,
        h_down_w=h_down_w,
        h_down_b=h_down_b,
        v_down_w=v_down_w,
        v_down_b=v_down_b,
        up_w=up_w,
        up_b=up_b,
        lam=lam,
        head_w=head_w,
        head_b=head_b,
        num_classes=[h.config.num_classes for h in heads],
    )


class MultiTaskEngine:
    """Evaluates many bypass heads on one set of captured backbone features."""

    def __init__(
        self,
        backbone: Backbone,
        heads: Mapping[str, ResTuningBypass],
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        subset_cache_size: int = 32,
        kernel_backend: str | None = None,
    ):
        """kernel_backend: "auto" | "torch" | "triton", or None to follow `kernels.set_backend` (see kernels)."""
        self.kernel_backend = kernels.check_backend(kernel_backend) if kernel_backend is not None else None
        self.backbone = backbone
        param = next(backbone.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.dtype = dtype if dtype is not None else param.dtype
        embed_dim = backbone.embed_dim
        for name, head in heads.items():
            if head.embed_dim != embed_dim:
                raise ConfigError(f"head {name!r} expects embed dim {head.embed_dim}, the backbone has {embed_dim}")
            if max(head.config.layers) > backbone.depth:
                raise ConfigError(f"head {name!r} taps block {max(head.config.layers)}; the backbone has {backbone.depth}")
        by_key: dict[GroupKey, list[str]] = OrderedDict()
        for name in heads:
            by_key.setdefault(group_key(heads[name]), []).append(name)
        self.groups: list[GroupWeights] = [
            pack_group(names, [heads[n] for n in names], embed_dim).to(self.device, self.dtype)
            for names in by_key.values()
        ]
        self._where = {name: (g, i) for g, group in enumerate(self.groups) for i, name in enumerate(group.names)}
        self._subset_cache: OrderedDict[tuple, list[GroupWeights]] = OrderedDict()
        self._subset_cache_size = subset_cache_size

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def _groups_for(self, names: Sequence[str] | None) -> list[GroupWeights]:
        if names is None:
            return self.groups
        unknown = [n for n in names if n not in self._where]
        if unknown:
            raise InputError(f"unknown tasks {unknown}; loaded: {sorted(self._where)}")
        key = tuple(dict.fromkeys(names))
        cached = self._subset_cache.get(key)
        if cached is not None:
            self._subset_cache.move_to_end(key)
            return cached
        wanted: dict[int, list[int]] = OrderedDict()
        for name in key:
            g, i = self._where[name]
            wanted.setdefault(g, []).append(i)
        groups = [
            self.groups[g] if len(idx) == self.groups[g].num_heads and idx == sorted(idx) else self.groups[g].select(idx)
            for g, idx in wanted.items()
        ]
        self._subset_cache[key] = groups
        if len(self._subset_cache) > self._subset_cache_size:
            self._subset_cache.popitem(last=False)
        return groups

    @torch.inference_mode()
    def run(self, tokens: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Logits per task from captured features [x_0 … x_L] (each [B, N, D]); {name: [B, C]}."""
        if len(tokens) != self.backbone.depth + 1:
            raise InputError(f"expected {self.backbone.depth + 1} feature tensors (x_0 … x_L), got {len(tokens)}")
        out: dict[str, torch.Tensor] = {}
        for group in self._groups_for(names):
            positions = self.backbone.token_positions(group.pooling)
            selected = [t[:, positions].to(self.dtype) for t in tokens]
            # bypass [T, B, N_sel, D] → final norm + pooling → heads: fused Triton kernels on CUDA
            logits = kernels.group_logits(selected, group, self.backbone, backend=self.kernel_backend)  # [B, T, C_max]
            for i, name in enumerate(group.names):
                out[name] = logits[:, i, : group.num_classes[i]]
        if names is not None:
            out = {n: out[n] for n in names}
        return out

    def classify(self, images: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Backbone once, then every requested head."""
        return self.run(self.backbone.forward_features(images), names)
