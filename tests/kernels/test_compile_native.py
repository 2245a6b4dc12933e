"""Every kernel variant the engine launches compiles for an H100 (sm_90) — no GPU needed."""
from __future__ import annotations

import pytest
import torch

from restuning.kernels import triton as triton_ops
from tests.kernels.kernel_cases import Case, as_, random_group, random_layer_norm, random_tokens


def _why_not() -> str | None:
    """The compile check uses Triton internals of the version this project pins (3.8)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        if not get_ptxas(90).path:
            return "Triton's NVIDIA backend has no ptxas"
        import tests.kernels.compile_check  # noqa: F401  (native_specialize_impl, GPUTarget)
    except Exception as exc:
        return f"this Triton cannot compile for sm_90 without a GPU here: {type(exc).__name__}: {exc}"
    return None


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

VARIANTS = [
    # (group case at ViT-B width, norms, what the engine calls)
    ("token-fp16", Case(19, 10, 1, 1, "fp16", 768, 12, "gelu", "gelu"), ("ln", None)),
    ("token-bf16-b32-softmax", Case(19, 10, 1, 32, "bf16", 768, 12, "softmax", "softmax"), ("ln", None)),
    ("avg-fp16-fcnorm", Case(19, 10, 196, 2, "fp16", 768, 12, "gelu", "gelu"), (None, "ln")),
    ("avg-bf16-both-norms", Case(3, 5, 196, 2, "bf16", 768, 3, None, "gelu"), ("ln", "ln")),
    ("token-fp32-odd-width", Case(3, 32, 1, 7, "fp32", 100, 2, "gelu", None), ("ln", "ln")),
]


def routed_slots(case: Case, dtype):
    """Slot tensors of the case's group shape (every slot random), as the engine holds them."""
    from restuning.kernels.slots import TENSORS, SlotLayout, SlotTensors

    layout = SlotLayout(layers=tuple(range(1, case.stages + 1)), pooling="token", h_act=case.h_act,
                        v_act=case.v_act, h_rank=case.dim if case.h_act else 0, v_rank=case.dim if case.v_act else 0,
                        classes=11, embed_dim=case.width)
    slots = SlotTensors.empty(layout, case.heads, device="cpu", dtype=torch.float32)
    for name in TENSORS:
        tensor = getattr(slots, name)
        if tensor is not None:
            tensor.normal_()
    return type(slots)(**{**vars(slots), **{k: getattr(slots, k).to(dtype) for k in TENSORS
                                            if getattr(slots, k) is not None}})


@pytest.mark.parametrize("name,case,norms", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_engine_kernels_compile_for_sm90(monkeypatch, name, case, norms):
    dtype = case.torch_dtype
    w = as_(random_group(case), "cpu", dtype)
    tokens = as_(random_tokens(case), "cpu", dtype)
    ln1, ln2 = (as_(random_layer_norm(case.width, i), "cpu", dtype) if n else None for i, n in enumerate(norms))
    from tests.kernels.compile_check import compile_launch, recording

    with recording(monkeypatch) as rec:
        for mode in triton_ops.MODES:
            triton_ops.group_logits(tokens, w, ln1, ln2, mode=mode)
        m, t, r, d = case.batch * case.tokens, case.heads, case.dim, case.width
        routes = torch.arange(m) % (t + 1) - 1
        adapters = (torch.randn(t, d, r), torch.randn(t, r), torch.randn(t, r, d), torch.randn(t, d))
        for act in ("gelu", "softmax"):
            triton_ops.routed_adapter(tokens[0].reshape(m, d), routes, *(a.to(dtype) for a in adapters), act)
        slots = routed_slots(case, dtype)  # per-request routing: pairs of (image, slot)
        pairs = 2 * case.batch
        image, slot = torch.arange(pairs) % case.batch, torch.arange(pairs) % slots.capacity
        b = torch.randn(pairs, case.tokens, d).to(dtype)
        triton_ops.routed_bypass_stage(tokens[1], image, b, slot, slots, 0)
    kernels = {launch[0] for launch in rec.launches}
    assert kernels == {"_bypass_stack_kernel", "_bypass_stage_kernel", "_norm_pool_head_kernel",
                       "_routed_adapter_kernel", "_routed_bypass_stage_kernel"}
    seen = set()
    for kernel, args, kwargs in rec.launches:
        key = (kernel, tuple(sorted((k, v) for k, v in kwargs.items())), tuple(
            str(a.dtype) for a in args if isinstance(a, torch.Tensor)))
        if key in seen:
            continue
        seen.add(key)
        compiled = compile_launch(kernel, args, kwargs)
        assert compiled.asm["cubin"], kernel
