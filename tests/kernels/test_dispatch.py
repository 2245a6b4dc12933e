"""Dispatch rules of restuning.kernels: which path runs, and the errors when Triton cannot."""
from __future__ import annotations

import os

import pytest
import torch

from restuning import kernels
from restuning.engine import MultiTaskEngine
from restuning.errors import ConfigError
from restuning.kernels import reference
from restuning.kernels import triton as triton_ops
from restuning.kernels.triton import _runtime
from tests.kernels.kernel_cases import Case, random_group, random_tokens


@pytest.fixture
def group():
    case = Case(3, 10, 1, 2, "fp32", 40, 2)
    return random_tokens(case), random_group(case)


@pytest.fixture
def no_triton_calls(monkeypatch):
    for name in ("bypass_group", "group_logits", "routed_adapter"):
        monkeypatch.setattr(triton_ops, name, lambda *a, **k: pytest.fail("the Triton path ran"))


def test_auto_runs_the_reference_for_cpu_tensors(group, no_triton_calls, interpreter, monkeypatch):
    """auto picks Triton for CUDA tensors only; CPU tensors run PyTorch even with the interpreter on."""
    tokens, w = group
    monkeypatch.setattr(kernels, "_backend", None)
    monkeypatch.delenv("RESTUNE_KERNEL_BACKEND", raising=False)
    assert kernels.get_backend() == "auto"
    out = kernels.bypass_group(tokens, w)
    assert torch.equal(out, reference.bypass_group(tokens, w))


def test_forced_torch_never_runs_triton(group, no_triton_calls, interpreter):
    tokens, w = group
    kernels.bypass_group(tokens, w, backend="torch")
    x = torch.randn(4, 40)
    kernels.routed_adapter(x, torch.tensor([0, -1, 1, 0]), torch.randn(2, 40, 3), torch.randn(2, 3),
                           torch.randn(2, 3, 40), torch.randn(2, 40), backend="torch")


def test_forced_triton_on_cpu_needs_the_interpreter(group, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tokens, w = group
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        kernels.bypass_group(tokens, w, backend="triton")


def test_forced_triton_runs_the_kernels_under_the_interpreter(group, interpreter):
    tokens, w = group
    out = kernels.bypass_group(tokens, w, backend="triton")
    assert (out - reference.bypass_group(tokens, w)).abs().max() < 1e-5


def test_set_backend_is_process_wide_and_checked(group, interpreter, monkeypatch):
    tokens, w = group
    monkeypatch.setattr(kernels, "_backend", None)
    kernels.set_backend("triton")
    assert kernels.get_backend() == "triton" and kernels.use_triton(tokens[0])
    assert not kernels.use_triton(tokens[0], "torch")  # a per-call backend wins
    with pytest.raises(ConfigError, match="unknown kernel backend 'cuda'"):
        kernels.set_backend("cuda")


def test_backend_from_the_environment(group, monkeypatch):
    tokens, w = group
    monkeypatch.setattr(kernels, "_backend", None)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("RESTUNE_KERNEL_BACKEND", "triton")
    assert kernels.get_backend() == "triton"
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):  # forced, on CPU, no interpreter
        kernels.bypass_group(tokens, w)
    monkeypatch.setenv("RESTUNE_KERNEL_BACKEND", "torch")
    assert kernels.get_backend() == "triton"  # read once: a later change of the variable does not switch paths
    monkeypatch.setattr(kernels, "_backend", None)  # a fresh process
    monkeypatch.setenv("RESTUNE_KERNEL_BACKEND", "fast")
    with pytest.raises(ConfigError, match="RESTUNE_KERNEL_BACKEND='fast'"):
        kernels.bypass_group(tokens, w)
    kernels.set_backend("torch")  # an explicit choice wins over the variable
    assert kernels.get_backend() == "torch"


def test_forced_triton_rejects_unsupported_dtypes_and_autograd(group, interpreter):
    tokens, w = group
    with pytest.raises(ConfigError, match="float64"):
        kernels.bypass_group([t.double() for t in tokens], w.to(dtype=torch.float64), backend="triton")
    leaf = tokens[0].clone().requires_grad_()
    with pytest.raises(ConfigError, match="inference-only"):
        kernels.bypass_group([leaf] + tokens[1:], w, backend="triton")
    with torch.no_grad():  # no graph recorded: fine
        kernels.bypass_group([leaf] + tokens[1:], w, backend="triton")


def test_engine_kernel_backend_setting(micro_backbone):
    with pytest.raises(ConfigError, match="unknown kernel backend 'gpu'"):
        MultiTaskEngine(micro_backbone, {}, kernel_backend="gpu")
    assert MultiTaskEngine(micro_backbone, {}).kernel_backend is None  # follows kernels.set_backend
    assert MultiTaskEngine(micro_backbone, {}, kernel_backend="torch").kernel_backend == "torch"


def test_pool_norms_of_timm_backbones(micro_backbone, micro_avg_backbone64):
    norm1, norm2 = kernels.pool_norms(micro_backbone)  # class-token ViT: final LayerNorm, no fc_norm
    assert norm1 is not None and norm2 is None and norm1.eps == micro_backbone.model.norm.eps
    norm1, norm2 = kernels.pool_norms(micro_avg_backbone64)  # mean-pooling ViT: fc_norm only
    assert norm1 is None and norm2 is not None
    assert kernels.pool_norms(object()) is None


def test_norm_pool_logits_reference_equals_backbone_pool(micro_backbone64, micro_avg_backbone64):
    """The reference the fused norm/pool/head kernel is held to equals the engine's backbone.pool path."""
    for bb in (micro_backbone64, micro_avg_backbone64):
        w = random_group(Case(3, 10, 1, 2, "fp32", bb.embed_dim, 2)).to(dtype=torch.float64)
        norms = kernels.pool_norms(bb)
        for n in (1, 16):
            b_last = torch.randn(3, 2, n, bb.embed_dim, dtype=torch.float64)
            expected = reference.heads_logits(bb.pool(b_last).transpose(0, 1), w.head_w, w.head_b)
            got = reference.norm_pool_logits(b_last, *norms, w.head_w, w.head_b)
            assert (got - expected).abs().max() < 1e-12


def test_kernel_modules_load_without_leaking_the_interpreter_setting():
    """Both copies of the kernels coexist; loading them leaves TRITON_INTERPRET as it was."""
    import triton
    from triton.runtime.interpreter import InterpretedFunction

    before = os.environ.get("TRITON_INTERPRET")
    interpreted, compiled = _runtime.kernel_module(True), _runtime.kernel_module(False)
    assert os.environ.get("TRITON_INTERPRET") == before
    assert isinstance(interpreted._bypass_stack_kernel, InterpretedFunction)
    assert isinstance(compiled._bypass_stack_kernel, triton.runtime.JITFunction)
    assert not _runtime.interpreting()
