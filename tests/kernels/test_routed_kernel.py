"""Routed adapter kernel (per-sample tuner routing, SGMV style) against reference.routed_adapter."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from restuning.errors import InputError
from restuning.kernels import reference
from restuning.kernels import triton as triton_ops
from tests.kernels.kernel_cases import BATCHES, CUDA, DIMS, DTYPES, HEADS, TOKENS, Case, assert_close, rounded

# Case fields reused: heads = T tuners, dim = r, tokens × batch = rows, width = D; v_act = activation.
CPU_ROUTED = [
    Case(1, 5, 1, 1, "fp32", 40, 1, h_act=None, v_act="gelu"),
    Case(3, 10, 197, 7, "fp16", 40, 1, h_act=None, v_act="gelu"),
    Case(19, 16, 1, 32, "bf16", 100, 1, h_act=None, v_act="softmax"),
    Case(64, 32, 1, 7, "fp32", 40, 1, h_act=None, v_act="softmax"),
    Case(3, 32, 197, 1, "bf16", 100, 1, h_act=None, v_act="gelu"),
    Case(19, 5, 197, 32, "fp32", 40, 1, h_act=None, v_act="gelu"),
    Case(3, 10, 1, 7, "fp16", 40, 1, h_act=None, v_act="gelu", blocks="small"),
]


def _cuda_routed() -> list[Case]:
    out = []
    for i, (t, r, n, b, dt) in enumerate(itertools.product(HEADS, DIMS, TOKENS, BATCHES, DTYPES)):
        out.append(Case(t, r, n, b, dt, 768, 1, h_act=None, v_act=("gelu", "softmax")[i % 2], device="cuda"))
    return out


PARAMS = [c.param() for c in CPU_ROUTED] + ([c.param() for c in _cuda_routed()] if CUDA else [])


def _adapters(case: Case, device="cpu", seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    t, d, r = case.heads, case.width, case.dim
    return (torch.randn(t, d, r, generator=g, device=device) / math.sqrt(d),
            torch.randn(t, r, generator=g, device=device) * 0.1,
            torch.randn(t, r, d, generator=g, device=device) / math.sqrt(r),
            torch.randn(t, d, generator=g, device=device) * 0.1)


def _routes(case: Case, m: int) -> torch.Tensor:
    """Per-sample routing (every token of a sample uses the sample's tuner), some samples on no tuner (−1),
    tuner indices from the whole range (so some tuners get no rows when T > B)."""
    g = torch.Generator().manual_seed(11)
    per_sample = torch.randint(-1, case.heads, (case.batch,), generator=g)
    per_sample[0] = case.heads - 1  # the last tuner is always used
    return per_sample.repeat_interleave(case.tokens)[:m]


@pytest.mark.parametrize("case", PARAMS)
def test_routed_adapter_matches_reference(case, on_device):
    dtype = case.torch_dtype
    m = case.batch * case.tokens
    x = torch.randn(m, case.width, generator=torch.Generator(device=on_device).manual_seed(3), device=on_device)
    weights = _adapters(case, on_device)
    route = _routes(case, m).to(on_device)
    ref = reference.routed_adapter(rounded(x, dtype), route, *(rounded(v, dtype) for v in weights), case.v_act)
    out = triton_ops.routed_adapter(x.to(dtype), route, *(v.to(dtype) for v in weights), case.v_act,
                                    blocks=case.block_override)
    assert out.dtype == dtype and out.shape == (m, case.width)
    assert_close(out, ref, dtype, case.v_act)
    passthrough = route < 0
    if passthrough.any():  # rows without a tuner are copied bit for bit
        assert torch.equal(out[passthrough], x.to(dtype)[passthrough])


@pytest.mark.interpreter
def test_routed_adapter_all_rows_one_tuner_and_none(interpreter):
    case = Case(3, 10, 1, 1, "fp32", 40, 1)
    x = torch.randn(9, 40)
    weights = [v.float() for v in _adapters(case)]
    for route in (torch.full((9,), 2), torch.full((9,), -1)):
        ref = reference.routed_adapter(x, route, *weights)
        assert_close(triton_ops.routed_adapter(x, route, *weights), ref, torch.float32)


@pytest.mark.interpreter
def test_routed_adapter_rejects_bad_routes(interpreter):
    case = Case(3, 10, 1, 1, "fp32", 40, 1)
    weights = [v.float() for v in _adapters(case)]
    x = torch.randn(4, 40)
    with pytest.raises(InputError, match=r"\[-1, 2\]"):
        triton_ops.routed_adapter(x, torch.tensor([0, 3, 1, 1]), *weights)
    with pytest.raises(InputError, match="4 rows"):
        triton_ops.routed_adapter(x, torch.tensor([0, 1]), *weights)
