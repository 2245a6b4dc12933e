"""Fused bypass kernels (restuning/kernels/triton/bypass.py) against the PyTorch reference."""
from __future__ import annotations

import pytest
import torch

from restuning.kernels import reference
from restuning.kernels import triton as triton_ops
from tests.kernels.kernel_cases import (
    CPU_CASES,
    CUDA,
    Case,
    as_,
    assert_close,
    cases,
    cuda_cases,
    random_group,
    random_layer_norm,
    random_tokens,
    rounded,
)

NORMS = ("ln-none", "none-ln", "ln-ln", "none-none")  # (final norm, post-pool norm): token ViT, avg ViT, both, neither


def _norms_for(case: Case) -> str:
    """Full-size CUDA cases use the ViT's own combination (token: final LayerNorm; mean: fc_norm);
    the others cycle through all four, so every fused epilogue path is compared."""
    if case.device == "cuda" and case.width == 768:
        return "ln-none" if case.tokens == 1 else "none-ln"
    return NORMS[sum(map(ord, case.id)) % len(NORMS)]


def _setup(case: Case, device: str):
    dtype = case.torch_dtype
    w, toks = random_group(case, device=device), random_tokens(case, device=device)
    kernel_in = as_(toks, device, dtype), as_(w, device, dtype)
    ref_in = rounded(toks, dtype), rounded(w, dtype)  # the same values, in fp32
    return kernel_in, ref_in


@pytest.mark.parametrize("case", cases())
def test_bypass_group_matches_reference(case, on_device):
    """Whole layer stack (one launch) and stage by stage (one launch per stage) equal reference.bypass_group."""
    (toks, w), (toks_ref, w_ref) = _setup(case, on_device)
    ref = reference.bypass_group(toks_ref, w_ref)
    assert ref.abs().max() > 0.5  # the comparison below is not between near-zero tensors
    for mode in triton_ops.MODES:
        out = triton_ops.bypass_group(toks, w, mode=mode, blocks=case.block_override)
        assert out.dtype == case.torch_dtype and out.device.type == case.device
        assert out.shape == (case.heads, case.batch, case.tokens, case.width)
        assert_close(out, ref, case.torch_dtype, mode)


@pytest.mark.parametrize("case", cases(CPU_CASES[::2], cuda_every=3))
def test_bypass_stage_matches_reference(case, on_device):
    """One stage from the shared b_0 = x_0 ([1, M, D]) and from per-head states ([T, M, D])."""
    (toks, w), (toks_ref, w_ref) = _setup(case, on_device)
    m, d, s = case.batch * case.tokens, case.width, case.stages - 1
    g = torch.Generator(device=on_device).manual_seed(7)
    b_heads = torch.randn(case.heads, m, d, generator=g, device=on_device)
    for b in (toks_ref[0].reshape(1, m, d), b_heads):
        ref = reference.bypass_stage(toks_ref[s + 1].reshape(m, d), rounded(b, case.torch_dtype), w_ref, s)
        out = triton_ops.bypass_stage(toks[s + 1].reshape(m, d), b.to(case.torch_dtype), w, s,
                                      blocks=case.block_override)
        assert out.shape == (case.heads, m, d)
        assert_close(out, ref, case.torch_dtype, f"b {list(b.shape)}")


@pytest.mark.parametrize("case", cases())
def test_group_logits_matches_reference(case, on_device):
    """Bypass + final norm + pooling (class token when N = 1, else mean) + post-pool norm + heads."""
    (toks, w), (toks_ref, w_ref) = _setup(case, on_device)
    which = _norms_for(case)
    ln1 = random_layer_norm(case.width, 3, on_device) if which.startswith("ln") else None
    ln2 = random_layer_norm(case.width, 4, on_device) if which.endswith("ln") else None
    ref = reference.norm_pool_logits(reference.bypass_group(toks_ref, w_ref), rounded(ln1, case.torch_dtype),
                                     rounded(ln2, case.torch_dtype), w_ref.head_w, w_ref.head_b)
    assert ref.abs().max() > 0.1
    for mode in triton_ops.MODES:
        out = triton_ops.group_logits(toks, w, as_(ln1, on_device, case.torch_dtype),
                                      as_(ln2, on_device, case.torch_dtype), mode=mode, blocks=case.block_override)
        assert out.dtype == case.torch_dtype and out.shape == (case.batch, case.heads, w.head_w.shape[-1])
        assert_close(out, ref, case.torch_dtype, f"{mode}, norms {which}")


@pytest.mark.parametrize("case", cases(CPU_CASES[:4], cuda_every=3))
def test_norm_pool_logits_matches_reference(case, on_device):
    """The norm/pool/head kernel alone, on b_L given directly, every norm combination."""
    dtype = case.torch_dtype
    g = torch.Generator(device=on_device).manual_seed(5)
    w = random_group(case, device=on_device)
    b = torch.randn(case.heads, case.batch, case.tokens, case.width, generator=g, device=on_device) * 2 + 0.5
    for which in NORMS:
        ln1 = random_layer_norm(case.width, 3, on_device) if which.startswith("ln") else None
        ln2 = random_layer_norm(case.width, 4, on_device) if which.endswith("ln") else None
        ref = reference.norm_pool_logits(rounded(b, dtype), rounded(ln1, dtype), rounded(ln2, dtype),
                                         rounded(w.head_w, dtype), rounded(w.head_b, dtype))
        out = triton_ops.norm_pool_logits(b.to(dtype), as_(ln1, on_device, dtype), as_(ln2, on_device, dtype),
                                          w.head_w.to(dtype), w.head_b.to(dtype))
        assert_close(out, ref, dtype, which)


@pytest.mark.interpreter
def test_wrong_weights_are_caught(interpreter):
    """The comparison has teeth: one λ off by 0.05 in one head breaks the fp32 tolerance."""
    (toks, w), (toks_ref, w_ref) = _setup(Case(3, 10, 1, 7, "fp32", 40, 3), "cpu")
    ref = reference.bypass_group(toks_ref, w_ref)
    assert_close(triton_ops.bypass_group(toks, w), ref, torch.float32)
    w.lam = w.lam.clone()
    w.lam[1, 2] += 0.05
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(triton_ops.bypass_group(toks, w), ref, torch.float32)


def test_native_cuda_cases():
    """Reports, rather than silently drops, the full-size native cases when there is no GPU."""
    n = len(cuda_cases())
    if not CUDA:
        pytest.skip(f"{n} native full-size CUDA cases per kernel test not collected: no CUDA device "
                    "(run bench/gpu.sh on a GPU machine)")
    assert n > 288
