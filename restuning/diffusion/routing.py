"""Many style tuners on one batch: each sample's bypass uses its own style (multi-LoRA style routing).

The U-Net runs once per denoising step for the whole batch (every prompt × style pair, both CFG
branches). Its taps then go through the bypass of each sample's style:

- the group adapters are token-wise over rows of C/groups channels, so every stage's H and V run
  as two calls of `restuning.kernels.routed_adapter` over the rows of *all* styled samples at once
  (one row → one tuner index); on CUDA that dispatch picks the fused Triton kernel where it applies
  (hidden size ≤ TRITON_MAX_HIDDEN, see below), else the PyTorch reference (cuBLAS GEMMs per style);
- the zero-init 3×3 convs are per style: one conv per style over that style's samples;
- samples with style `base` (index −1) skip the bypass and keep the U-Net's own feature map.

Tuners whose structures differ (groups, scale factor, conv groups) cannot share stacked weights;
they form separate banks, each routed as above.

`RoutedBypass(tuners).plan(sample_tuner)` precomputes the index tensors once per generation, so the
per-step work has no host synchronisation of its own.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from restuning import kernels
from restuning.diffusion.bypass import UNetBypass, UNetBypassConfig, from_rows, to_rows, upsample_nearest
from restuning.errors import ConfigError, InputError

# The Triton routed-adapter kernel keeps a [BLOCK_M, next_pow2(r)] float32 tile in registers: it is built
# for LoRA-like hidden sizes. SD v1.5's group adapters have r = 160…640 (wider than their rows, 80…320),
# where that tile would be up to [64, 1024] = 256 KB, an SM's whole register file. Wider hidden sizes
# therefore take the PyTorch path (one cuBLAS GEMM pair per style) unless "triton" is forced. A design
# bound from the kernel's tiling, not a measured crossover (no GPU here).
TRITON_MAX_HIDDEN = 128


@dataclass
class _StageWeights:
    h: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # down_w [T,c,r], down_b [T,r], up_w [T,r,c], up_b [T,c]
    v: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    convs: list[tuple[torch.Tensor, torch.Tensor]] | None  # per tuner: weight, bias


def _pack_adapter(adapters) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # nn.Linear stores W as [out, in]; the routed kernel wants x @ W, i.e. [in, out].
    return (
        torch.stack([a.down.weight.detach().t() for a in adapters]).contiguous(),
        torch.stack([a.down.bias.detach() for a in adapters]).contiguous(),
        torch.stack([a.up.weight.detach().t() for a in adapters]).contiguous(),
        torch.stack([a.up.bias.detach() for a in adapters]).contiguous(),
    )


class _Bank:
    """Tuners of one structure with their weights stacked per stage."""

    def __init__(self, config: UNetBypassConfig, members: list[int], tuners: Sequence[UNetBypass]):
        self.config = config
        self.members = members  # global tuner indices, in bank order
        self.stages: list[_StageWeights] = []
        for i in range(config.num_stages):
            stages = [tuners[m].stages[i] for m in members]
            convs = None
            if stages[0].upsample is not None:
                convs = [(s.upsample.conv.weight.detach(), s.upsample.conv.bias.detach()) for s in stages]
            self.stages.append(_StageWeights(
                h=_pack_adapter([s.horizontal for s in stages]),
                v=_pack_adapter([s.vertical for s in stages]),
                convs=convs,
            ))


@dataclass
class _BankPlan:
    bank: _Bank
    samples: torch.Tensor  # [B_k] batch indices routed through this bank
    whole_batch: bool  # samples == arange(B): no gather/scatter needed (every row uses this bank)
    local: torch.Tensor  # [B_k] bank-local tuner index of each of those samples
    per_tuner: list[tuple[int, torch.Tensor]]  # (bank-local tuner, positions within `samples`)


class RoutedBypass:
    """Stacked weights of several UNetBypass tuners, routed per sample."""

    def __init__(self, tuners: Sequence[UNetBypass]):
        if not tuners:
            raise ConfigError("RoutedBypass needs at least one tuner")
        self.tuners = list(tuners)
        channels = {t.config.channels for t in self.tuners}
        if len(channels) > 1:
            raise ConfigError(f"the tuners were built for different U-Nets (tap channels {sorted(channels)})")
        by_structure: dict[UNetBypassConfig, list[int]] = {}
        for index, tuner in enumerate(self.tuners):
            by_structure.setdefault(tuner.config, []).append(index)
        self.banks = [_Bank(config, members, self.tuners) for config, members in by_structure.items()]

    def plan(self, sample_tuner: torch.Tensor | Sequence[int], device: torch.device | str | None = None, *,
             kernel_backend: str | None = None) -> "RoutingPlan":
        """Routing for a batch whose sample b uses tuner `sample_tuner[b]` (−1: no tuner, the base U-Net).

        `kernel_backend` ("auto", "torch", "triton"; None = the process-wide `kernels.set_backend`)
        picks the routed-adapter implementation for this plan's calls.
        """
        st = torch.as_tensor(sample_tuner, dtype=torch.long).cpu()
        if st.dim() != 1:
            raise InputError(f"sample_tuner must be 1-D, got shape {list(st.shape)}")
        if st.numel() and (int(st.max()) >= len(self.tuners) or int(st.min()) < -1):
            raise InputError(f"sample_tuner values must be in [-1, {len(self.tuners) - 1}], got {st.tolist()}")
        device = torch.device(device) if device is not None else self.banks[0].stages[0].h[0].device
        plans = []
        for bank in self.banks:
            local_of = torch.full((len(self.tuners) + 1,), -1, dtype=torch.long)
            local_of[torch.tensor(bank.members)] = torch.arange(len(bank.members))
            local = local_of[st]  # index −1 reads the last slot, which stays −1
            samples = (local >= 0).nonzero(as_tuple=True)[0]
            if samples.numel() == 0:
                continue
            local = local[samples]
            per_tuner = [(int(t), (local == t).nonzero(as_tuple=True)[0].to(device)) for t in torch.unique(local)]
            whole = samples.numel() == st.numel()  # `samples` is sorted, so this means arange(B)
            plans.append(_BankPlan(bank, samples.to(device), whole, local.to(device), per_tuner))
        return RoutingPlan(plans, batch_size=st.numel(), kernel_backend=kernel_backend)


class RoutingPlan:
    """Callable on the U-Net taps: returns the feature map that replaces conv_norm_out's input."""

    def __init__(self, plans: list[_BankPlan], batch_size: int, kernel_backend: str | None = None):
        self.plans = plans
        self.batch_size = batch_size
        self.kernel_backend = kernel_backend
        self._row_tuner: dict[tuple[int, int], torch.Tensor] = {}

    def _rows_of(self, k: int, plan: _BankPlan, rows_per_sample: int) -> torch.Tensor:
        key = (k, rows_per_sample)
        if key not in self._row_tuner:
            self._row_tuner[key] = plan.local.repeat_interleave(rows_per_sample)
        return self._row_tuner[key]

    def __call__(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        base = taps[-1]
        if base.shape[0] != self.batch_size:
            raise InputError(f"the routing plan is for a batch of {self.batch_size}, got {base.shape[0]}")
        out = base
        for k, plan in enumerate(self.plans):
            b = _route_bank(taps, plan, lambda rps, k=k, plan=plan: self._rows_of(k, plan, rps), self.kernel_backend)
            out = b.to(out.dtype) if plan.whole_batch else out.index_copy(0, plan.samples, b.to(out.dtype))
        return out


def _route_bank(taps: Sequence[torch.Tensor], plan: _BankPlan, row_tuner_for, backend: str | None) -> torch.Tensor:
    config = plan.bank.config
    groups = config.groups

    def rows_of(t: torch.Tensor) -> torch.Tensor:
        return t if plan.whole_batch else t.index_select(0, plan.samples)

    b = rows_of(taps[0])
    for i, weights in enumerate(plan.bank.stages):
        x = rows_of(taps[i + 1])
        n, c, h, w = x.shape
        row_tuner = row_tuner_for(h * w * groups)
        stage_backend = backend
        if backend != "triton" and config.hidden_dim(i) > TRITON_MAX_HIDDEN:
            stage_backend = "torch"
        hx = kernels.routed_adapter(to_rows(x, groups), row_tuner, *weights.h, "gelu", backend=stage_backend)
        vb = kernels.routed_adapter(to_rows(b, groups), row_tuner, *weights.v, "gelu", backend=stage_backend)
        b = from_rows(hx + vb, x.shape)
        if weights.convs is not None:
            size = taps[i + 2].shape[-2:]
            up = upsample_nearest(b, size)
            if len(plan.per_tuner) == 1:  # one style in this bank: its conv over every row, no scatter
                weight, bias = weights.convs[plan.per_tuner[0][0]]
                b = F.conv2d(up, weight, bias, padding=1, groups=config.conv_groups)
                continue
            nxt = up.new_empty((n, taps[i + 2].shape[1], *size))
            for t, positions in plan.per_tuner:
                weight, bias = weights.convs[t]
                nxt.index_copy_(0, positions, F.conv2d(up.index_select(0, positions), weight, bias, padding=1,
                                                        groups=config.conv_groups))
            b = nxt
    return b
