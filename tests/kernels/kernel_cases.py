"""Random head groups, case lists and tolerances shared by the kernel tests.

Case lists: with CUDA, the full product of the issue's axes runs natively at ViT-B width
(D = 768, 12 stages) plus an odd width; on the CPU a covering subset runs through Triton's
interpreter at small sizes (every value of every axis appears at least once).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch

from restuning.kernels.reference import LayerNormSpec
from restuning.kernels.weights import GroupWeights

CUDA = torch.cuda.is_available()
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HEADS = (1, 3, 19, 64)
DIMS = (5, 10, 16, 32)
TOKENS = (1, 197)
BATCHES = (1, 7, 32)
ACTS = (("gelu", "gelu"), ("softmax", "softmax"), ("gelu", "softmax"), ("softmax", "gelu"), (None, "gelu"),
        ("gelu", None), (None, None))

# max |kernel − fp32 reference| / max(1, max |reference|): the kernel sees dtype-rounded inputs and
# weights; the reference gets the same values in fp32. Like the reference run in fp16/bf16, the
# kernel rounds b to the storage dtype after every stage; on the CPU cases its error is within 2× of
# that reference-in-dtype error (fp16 ≈ 4e-4, bf16 ≈ 7e-3, fp32 ≈ 1e-7), and these bounds leave
# 4-7× headroom for ViT-B width and 12 stages. A λ off by 0.05 in one head gives ≈ 5e-2.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}


@dataclass(frozen=True)
class Case:
    heads: int
    dim: int
    tokens: int
    batch: int
    dtype: str
    width: int  # D
    stages: int
    h_act: str | None = "gelu"
    v_act: str | None = "gelu"
    device: str = "cpu"  # "cpu": Triton's interpreter; "cuda": compiled
    blocks: str = "auto"  # "small": 16-wide tiles, many loop trips and edge masks

    @property
    def id(self) -> str:
        acts = f"{self.h_act or 'none'}-{self.v_act or 'none'}"
        return (f"{'interp' if self.device == 'cpu' else 'cuda'}-T{self.heads}-r{self.dim}-N{self.tokens}-"
                f"B{self.batch}-D{self.width}-S{self.stages}-{self.dtype}-{acts}"
                + ("-smallblocks" if self.blocks == "small" else ""))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def block_override(self) -> dict | None:
        return dict(block_m=16, block_k=16, block_n=16) if self.blocks == "small" else None

    def param(self):
        marks = [pytest.mark.cuda] if self.device == "cuda" else [pytest.mark.interpreter]
        return pytest.param(self, id=self.id, marks=marks)


# CPU: a covering subset (each T, r, N, B, dtype, activation pair and both odd widths at least once).
CPU_CASES = [
    Case(1, 5, 1, 1, "fp32", 40, 3, "gelu", "gelu"),
    Case(3, 10, 197, 7, "fp16", 40, 2, "softmax", "softmax"),
    Case(19, 16, 1, 32, "bf16", 100, 3, "gelu", "softmax"),
    Case(64, 32, 1, 7, "fp32", 40, 2, "softmax", "gelu"),
    Case(3, 32, 197, 1, "bf16", 100, 2, "gelu", None),
    Case(19, 5, 1, 7, "fp16", 40, 3, None, "gelu"),
    Case(1, 16, 197, 32, "fp32", 40, 2, None, None),
    Case(3, 10, 1, 7, "fp32", 40, 3, "gelu", "softmax", blocks="small"),
    Case(3, 16, 1, 1, "bf16", 40, 2, "softmax", "softmax", blocks="small"),
    Case(1, 10, 197, 1, "fp16", 100, 2, "gelu", "gelu"),
]


def cuda_cases() -> list[Case]:
    """The full product of T, r, N, B and dtype at ViT-B width and depth (GELU adapters, the common
    head), then every activation pair × dtype at an odd width, and with small tiles."""
    cases = [Case(t, r, n, b, dt, 768, 12, "gelu", "gelu", device="cuda")
             for t, r, n, b, dt in itertools.product(HEADS, DIMS, TOKENS, BATCHES, DTYPES)]
    for (h, v), dt in itertools.product(ACTS, DTYPES):
        cases.append(Case(19, 10, 197, 7, dt, 100, 4, h, v, device="cuda"))
        cases.append(Case(3, 5, 1, 7, dt, 40, 3, h, v, device="cuda", blocks="small"))
    return cases


def cases(cpu: list[Case] = CPU_CASES, cuda_every: int = 1) -> list:
    """pytest params: the CPU (interpreter) cases, plus every `cuda_every`-th CUDA case when CUDA is there."""
    return [c.param() for c in cpu] + ([c.param() for c in cuda_cases()[::cuda_every]] if CUDA else [])


def _gen(device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def random_group(case: Case, *, device="cpu", classes: int = 11, seed: int = 0, pooling: str = "token") -> GroupWeights:
    """A packed group in float32 laid out like engine.pack_group: per-head ranks ≤ r padded with zeros
    (GELU) or −inf down-bias (softmax), λ folded into the up-projections, per-head class counts
    ≤ `classes` with zero-padded head columns."""
    g = _gen(device, seed)
    f32 = torch.float32
    t, d, s_count, r = case.heads, case.width, case.stages, case.dim
    rh = r if case.h_act else 0
    rv = r if case.v_act else 0

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=f32)

    lam = torch.rand(s_count, t, generator=g, device=device, dtype=f32) * 0.8 + 0.1  # [S, T]
    ranks = torch.tensor([max(1, r - (i % 3) * (r // 3)) for i in range(t)], device=device)  # unequal: padding
    valid = torch.arange(r, device=device)[None, :] < ranks[:, None]  # [T, r]

    def down(act):  # [S, T, D, r], [S, T, r]
        w = randn(s_count, t, d, r) / math.sqrt(d) * valid[None, :, None, :]
        b = torch.where(valid, randn(s_count, t, r) * 0.1, -math.inf if act == "softmax" else 0.0)
        return w, b

    def up(mix):  # [S, T, r, D], λ or 1 − λ folded in
        scale = 0.5 / ranks.to(f32).sqrt()
        return randn(s_count, t, r, d) * (scale[:, None] * valid)[None, :, :, None] * mix[:, :, None, None]

    h_down_w = h_down_b = v_down_w = v_down_b = None
    ups = []
    if rh:
        w_h, b_h = down(case.h_act)
        h_down_w = w_h.permute(0, 2, 1, 3).reshape(s_count, d, t * rh)  # [S, D, T*r_h]
        h_down_b = b_h.reshape(s_count, t * rh)
        ups.append(up(lam))
    if rv:
        v_down_w, v_down_b = down(case.v_act)
        ups.append(up(1 - lam))
    class_ok = torch.arange(classes, device=device)[None, :] < torch.tensor(
        [max(1, classes - i % 4) for i in range(t)], device=device)[:, None]  # [T, C]
    return GroupWeights(
        names=[f"task{i}" for i in range(t)], layers=tuple(range(1, s_count + 1)), pooling=pooling,
        h_act=case.h_act, v_act=case.v_act, h_rank=rh, v_rank=rv,
        h_down_w=h_down_w, h_down_b=h_down_b, v_down_w=v_down_w, v_down_b=v_down_b,
        up_w=torch.cat(ups, dim=2) if ups else None, up_b=randn(s_count, t, d) * 0.05, lam=lam,
        head_w=randn(t, d, classes) / math.sqrt(d) * class_ok[:, None, :],
        head_b=randn(t, classes) * 0.1 * class_ok,
        num_classes=class_ok.sum(1).tolist(),
    )


def random_tokens(case: Case, *, device="cpu", seed: int = 1) -> list[torch.Tensor]:
    """[x_0 … x_S], each [B, N, D] float32."""
    g = _gen(device, seed)
    return [torch.randn(case.batch, case.tokens, case.width, generator=g, device=device)
            for _ in range(case.stages + 1)]


def random_layer_norm(width: int, seed: int, device="cpu") -> LayerNormSpec:
    g = _gen(device, seed)
    return LayerNormSpec(1 + 0.1 * torch.randn(width, generator=g, device=device),
                         0.1 * torch.randn(width, generator=g, device=device), 1e-6)


def as_(obj, device, dtype):
    """Move/cast a tensor, a list of tensors, a GroupWeights or a LayerNormSpec."""
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return obj.to(device=device, dtype=dtype)
    if isinstance(obj, list):
        return [as_(o, device, dtype) for o in obj]
    if isinstance(obj, LayerNormSpec):
        return LayerNormSpec(as_(obj.weight, device, dtype), as_(obj.bias, device, dtype), obj.eps)
    return obj.to(device=device, dtype=dtype)


def rounded(obj, dtype):
    """The values the kernel sees (rounded to `dtype`), in float32 for the reference (same device)."""
    device = _device_of(obj)
    return as_(as_(obj, device, dtype), device, torch.float32)


def _device_of(obj):
    if isinstance(obj, torch.Tensor):
        return obj.device
    if isinstance(obj, list):
        return obj[0].device
    if isinstance(obj, LayerNormSpec):
        return obj.weight.device
    return None if obj is None else obj.up_b.device


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float(), ref.detach().to(out.device, torch.float32)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.isfinite(out).all(), "kernel output has non-finite values"
    return (out - ref).abs().max().item() / max(1.0, ref.abs().max().item())


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> float:
    err = rel_err(out, ref)
    assert err <= TOLERANCE[dtype], f"{what}: max relative error {err:.3g} > {TOLERANCE[dtype]:.1g} ({dtype})"
    return err
