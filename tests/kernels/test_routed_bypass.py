"""Per-request routing: the routed bypass (reference and Triton kernel) computes exactly the (image, task) pairs
asked for, and each equals that head run on its own."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from restuning.bypass import BypassConfig, build_bypass
from restuning.engine import MultiTaskEngine
from restuning.kernels import reference
from restuning.kernels import triton as triton_ops
from restuning.kernels.slots import TENSORS
from tests.kernels.kernel_cases import assert_close

SPECS = [  # (horizontal, vertical, dims) per group; several heads per group with different dims (padded)
    ("adapter", "adapter", (3, 7, 5)),
    ("prefix", "prompt", (2, 4)),
    ("none", "adapter", (6,)),
    ("adapter", "none", (4, 4)),
    ("none", "none", (0,)),
]


def _heads(backbone, dtype, pooling):
    heads, i = {}, 0
    for h, v, dims in SPECS:
        for dim in dims:
            kwargs = {"dim": dim} if dim else {}
            config = BypassConfig.create(backbone.info, num_classes=2 + i % 4, horizontal=h, vertical=v,
                                         pooling=pooling, **kwargs)
            head = build_bypass(config, backbone.embed_dim, seed=i).to(dtype)
            with torch.no_grad():  # trained heads: λ away from 0.5, non-zero up-projections
                head.lambda_logits.normal_(generator=torch.Generator().manual_seed(i))
                for p in head.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + i), dtype=dtype))
            heads[f"t{i}"] = head
            i += 1
    return heads


TASK_SETS = [["t0", "t5"], ["t1", "t2", "t8"], [], ["t3", "t4", "t6", "t7", "t8", "t0"]]


@pytest.mark.parametrize("pooling", ["token", "avg"])
def test_routed_engine_equals_each_head_alone_float64(micro_backbone64, pooling):
    bb = micro_backbone64
    heads = _heads(bb, torch.float64, pooling)
    engine = MultiTaskEngine(bb, heads, kernel_backend="torch")
    feats = bb.forward_features(torch.randn(len(TASK_SETS), 3, 32, 32, dtype=torch.float64))
    out = engine.run_routed(feats, TASK_SETS)
    for i, tasks in enumerate(TASK_SETS):
        assert list(out[i]) == tasks  # exactly the image's own tasks, in its order
        for name in tasks:
            alone = heads[name]([f[i:i + 1] for f in feats], bb)[0]
            assert (out[i][name] - alone).abs().max().item() < 1e-10, (i, name)


@pytest.mark.parametrize("pooling", ["token", "avg"])
def test_every_image_with_k_pairs_reads_its_tokens_once_and_equals_each_head_alone(micro_backbone64, pooling,
                                                                                 monkeypatch):
    """Each image names k tasks of a group (what a client asking for a fixed number of tasks sends): the stage takes
    each image's tokens once for its k pairs, and every pair still equals its head run alone (float64)."""
    bb = micro_backbone64
    heads = _heads(bb, torch.float64, pooling)
    engine = MultiTaskEngine(bb, heads, kernel_backend="torch")
    seen = []
    real = reference.pairs_per_image
    monkeypatch.setattr(reference, "pairs_per_image", lambda image, images: seen.append(real(image, images))
                        or seen[-1])
    # two tasks of the adapter group and one of the softmax group per image, plus groups only some images use
    task_sets = [["t0", "t2", "t3", "t5"], ["t2", "t1", "t4", "t5"], ["t1", "t0", "t3", "t6"]]
    feats = bb.forward_features(torch.randn(len(task_sets), 3, 32, 32, dtype=torch.float64))
    out = engine.run_routed(feats, task_sets)
    assert 2 in seen  # both groups: k = 2 per image
    for i, tasks in enumerate(task_sets):
        assert list(out[i]) == tasks
        for name in tasks:
            alone = heads[name]([f[i:i + 1] for f in feats], bb)[0]
            assert (out[i][name] - alone).abs().max().item() < 1e-10, (i, name)


def test_pairs_per_image():
    assert reference.pairs_per_image(torch.tensor([0, 0, 1, 1, 2, 2]), 3) == 2
    assert reference.pairs_per_image(torch.tensor([0, 1, 2]), 3) == 1
    assert reference.pairs_per_image(torch.tensor([0, 0, 1, 2, 2, 2]), 3) is None  # uneven
    assert reference.pairs_per_image(torch.tensor([0, 1, 0, 1]), 2) is None  # not grouped by image
    assert reference.pairs_per_image(torch.tensor([0, 0, 2, 2]), 3) is None  # image 1 has none in this group


def test_routing_computes_only_the_pairs_asked_for(micro_backbone64, monkeypatch):
    bb = micro_backbone64
    engine = MultiTaskEngine(bb, _heads(bb, torch.float64, "token"), kernel_backend="torch")
    pairs = []
    real = reference.routed_group_logits

    def counting(tokens, image, slot, w, backbone, **kw):
        pairs.append(len(image))
        return real(tokens, image, slot, w, backbone, **kw)

    monkeypatch.setattr(reference, "routed_group_logits", counting)
    engine.run_routed(bb.forward_features(torch.randn(4, 3, 32, 32, dtype=torch.float64)), TASK_SETS)
    assert sum(pairs) == sum(len(t) for t in TASK_SETS) == 11  # the union for every image would be 4 x 9


def _slots_as(tensors, dtype):
    return replace(tensors, **{k: None if getattr(tensors, k) is None else getattr(tensors, k).to(dtype)
                               for k in TENSORS})


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pooling", ["token", "avg"])
def test_routed_stage_kernel_matches_reference(interpreter, micro_backbone, dtype, pooling):
    bb = micro_backbone
    engine = MultiTaskEngine(bb, _heads(bb, torch.float32, pooling), kernel_backend="torch")
    g = torch.Generator().manual_seed(5)
    tokens = [t[:, bb.token_positions(pooling)] for t in bb.forward_features(torch.randn(3, 3, 32, 32, generator=g))]
    for group in engine.groups:
        w = group.tensors
        used = [p.slot for p in engine._where.values() if p.group is group]
        image = torch.tensor([2, 0, 0, 1, 2][: 2 * len(used)] or [0])
        slot = torch.tensor([used[i % len(used)] for i in range(len(image))])
        b = torch.randn(len(image), tokens[0].shape[1], bb.embed_dim, generator=g)
        for s in range(w.layout.num_stages):
            ref = reference.routed_bypass_stage(tokens[s + 1], image, b, slot, w, s)
            out = triton_ops.routed_bypass_stage(tokens[s + 1].to(dtype), image, b.to(dtype), slot,
                                                 _slots_as(w, dtype), s)
            assert out.dtype == dtype and out.shape == ref.shape
            assert_close(out, ref, dtype, f"{group.layout} stage {s}")


@pytest.mark.interpreter
def test_routed_engine_on_the_triton_kernel(interpreter, micro_backbone):
    bb = micro_backbone
    heads = _heads(bb, torch.float32, "avg")
    fused = MultiTaskEngine(bb, heads, kernel_backend="triton")
    plain = MultiTaskEngine(bb, heads, kernel_backend="torch")
    feats = bb.forward_features(torch.randn(len(TASK_SETS), 3, 32, 32))
    for got, want in zip(fused.run_routed(feats, TASK_SETS), plain.run_routed(feats, TASK_SETS)):
        assert list(got) == list(want)
        for name in want:
            assert_close(got[name], want[name], torch.float32, name)
