"""MultiTaskEngine on the Triton backend (interpreter on CPU) equals the PyTorch backend."""
from __future__ import annotations

import pytest
import torch

from restuning import kernels
from restuning.backbones import create_backbone
from restuning.bypass import BypassConfig, build_bypass
from restuning.engine import MultiTaskEngine
from tests.kernels.kernel_cases import CUDA, DTYPES, TOLERANCE, rel_err

MIXED = [
    dict(horizontal="adapter", vertical="adapter", dim=5),
    dict(horizontal="adapter", vertical="adapter", dim=10),  # same group, padded 5 -> 10
    dict(horizontal="prefix", vertical="prompt", horizontal_dim=3, vertical_dim=7),  # softmax / softmax
    dict(horizontal="prompt", vertical="prefix", dim=2),  # joins the softmax group, −inf padding
    dict(horizontal="none", vertical="adapter", dim=4),
    dict(horizontal="adapter", vertical="none", dim=4, pooling="avg"),
    dict(horizontal="none", vertical="none", layers="1,3"),
    dict(horizontal="adapter", vertical="adapter", dim=3, layers="2-3", pooling="avg"),
    dict(horizontal="prefix", vertical="adapter", dim=6, pooling="token"),
]

_BACKBONES: dict = {}


def _backbone(name: str, dtype: torch.dtype, device: str = "cpu"):
    key = (name, dtype, device)
    if key not in _BACKBONES:
        _BACKBONES[key] = create_backbone(name, weights="random:0", dtype=dtype, device=device)
    return _BACKBONES[key]


def _heads(bb, specs, dtype, device="cpu"):
    heads = {}
    for i, spec in enumerate(specs):
        cfg = BypassConfig.create(bb.info, num_classes=2 + i, **spec)
        head = build_bypass(cfg, bb.embed_dim, seed=i)
        with torch.no_grad():
            head.lambda_logits.normal_(generator=torch.Generator().manual_seed(i))
        heads[f"task{i}"] = head.to(device=device, dtype=dtype)
    return heads


def _compare(bb, heads, images, dtype, names=None):
    fused = MultiTaskEngine(bb, heads, kernel_backend="triton")
    torch_engine = MultiTaskEngine(bb, heads, kernel_backend="torch")
    feats = bb.forward_features(images)
    out, ref = fused.run(feats, names), torch_engine.run(feats, names)
    assert list(out) == list(ref) == (list(names) if names else list(heads))
    tol = TOLERANCE[dtype] * (1 if dtype == torch.float32 else 2)  # both sides round to the dtype
    for name in ref:
        assert out[name].shape == ref[name].shape and out[name].dtype == dtype
        err = rel_err(out[name], ref[name])
        assert err <= tol, f"{name}: {err:.3g} > {tol:.1g}"
    return out


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("backbone", ["restune_vit_micro", "restune_vit_micro_avg"])
def test_triton_engine_equals_torch_engine(interpreter, monkeypatch, backbone, dtype):
    """Mixed groups (GELU and softmax tuners, padding, token and mean pooling, tapped subsets) on a
    class-token ViT (final LayerNorm) and a mean-pooling ViT (fc_norm), through the fused kernels only."""
    from restuning.kernels import reference
    from restuning.kernels import triton as triton_ops

    dt = DTYPES[dtype]
    bb = _backbone(backbone, dt)
    heads = _heads(bb, MIXED, dt)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dt)
    fused = MultiTaskEngine(bb, heads, kernel_backend="triton")
    feats = bb.forward_features(images)
    calls = []
    real = triton_ops.group_logits
    with monkeypatch.context() as mp:
        mp.setattr(triton_ops, "group_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
        mp.setattr(reference, "bypass_stage", lambda *a, **k: pytest.fail("the torch path ran"))
        out = fused.run(feats)
    assert len(calls) == len(fused.groups) == 7  # every group went through the fused kernels
    ref = MultiTaskEngine(bb, heads, kernel_backend="torch").run(feats)
    tol = TOLERANCE[dt] * (1 if dt == torch.float32 else 2)  # both sides round to the dtype
    for name in ref:
        assert out[name].shape == ref[name].shape == (3, heads[name].config.num_classes)
        assert out[name].dtype == dt
        err = rel_err(out[name], ref[name])
        assert err <= tol, f"{name}: {err:.3g} > {tol:.1g}"


@pytest.mark.interpreter
@pytest.mark.parametrize("batch", [1, 2])
def test_triton_engine_subsets_and_batch_sizes(interpreter, batch):
    bb = _backbone("restune_vit_micro", torch.float32)
    heads = _heads(bb, MIXED, torch.float32)
    images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    _compare(bb, heads, images, torch.float32, names=["task1", "task6", "task0", "task5"])


@pytest.mark.interpreter
def test_triton_engine_without_fusable_norms(interpreter, monkeypatch):
    """A backbone whose norms are not LayerNorm/Identity: fused bypass, then the backbone's own pool."""
    bb = _backbone("restune_vit_micro_avg", torch.float32)
    monkeypatch.setattr(kernels, "pool_norms", lambda backbone: None)
    _compare(bb, _heads(bb, MIXED[:6], torch.float32), torch.randn(2, 3, 32, 32), torch.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device: ViT-B/16 engine, native Triton kernels")
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("pooling", ["token", "avg"])
@pytest.mark.parametrize("batch", [1, 32])
def test_cuda_vit_base_engine(dtype, pooling, batch, monkeypatch):
    """ViT-B/16 (random weights), 19 heads with VTAB class counts, as in `restune bench multitask`."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from bench.multitask import VTAB_CLASSES

    dt = DTYPES[dtype]
    bb = _backbone("vit_base_patch16_224", dt, "cuda")
    heads = {}
    for i in range(19):
        cfg = BypassConfig.create(bb.info, num_classes=VTAB_CLASSES[i], pooling=pooling)
        heads[f"task{i:02d}"] = build_bypass(cfg, bb.embed_dim, seed=i).to(device="cuda", dtype=dt).eval()
    images = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dt)
    _compare(bb, heads, images, dt)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_auto_backend_uses_triton(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(2, 8, device="cuda", dtype=torch.float16)
    assert kernels.use_triton(x, "auto") and not kernels.use_triton(x.double(), "auto")
    assert not kernels.use_triton(x, "torch")
