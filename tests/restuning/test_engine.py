"""The multi-task engine equals running every head on its own."""
import pytest
import torch

from restuning.bypass import BypassConfig, build_bypass
from restuning.engine import MultiTaskEngine, group_key
from restuning.errors import InputError

MIXED = [
    dict(horizontal="adapter", vertical="adapter", dim=5),
    dict(horizontal="adapter", vertical="adapter", dim=10),  # same group as above, padded 5 -> 10
    dict(horizontal="prefix", vertical="prompt", horizontal_dim=3, vertical_dim=7),
    dict(horizontal="prompt", vertical="prefix", dim=2),  # joins the softmax/softmax group, padded with -inf
    dict(horizontal="none", vertical="adapter", dim=4),
    dict(horizontal="adapter", vertical="none", dim=4, pooling="avg"),
    dict(horizontal="none", vertical="none", layers="1,3"),
    dict(horizontal="adapter", vertical="adapter", dim=3, layers="2-3", pooling="avg"),
]


def _heads(bb, specs, dtype):
    heads = {}
    for i, spec in enumerate(specs):
        cfg = BypassConfig.create(bb.info, num_classes=2 + i, **spec)
        head = build_bypass(cfg, bb.embed_dim, seed=i).to(dtype)
        with torch.no_grad():
            head.lambda_logits.normal_(generator=torch.Generator().manual_seed(i))
        heads[f"task{i}"] = head
    return heads


def test_groups_and_padding(micro_backbone64):
    heads = _heads(micro_backbone64, MIXED, torch.float64)
    engine = MultiTaskEngine(micro_backbone64, heads)
    assert len(engine.groups) == 6
    assert group_key(heads["task0"]) == group_key(heads["task1"])
    assert engine.groups[0].layout.h_rank == 10 and engine.groups[0].used == 2


@pytest.mark.parametrize("batch", [1, 3])
def test_engine_equals_per_head_float64(micro_backbone64, batch):
    bb = micro_backbone64
    heads = _heads(bb, MIXED, torch.float64)
    engine = MultiTaskEngine(bb, heads)
    feats = bb.forward_features(torch.randn(batch, 3, 32, 32, dtype=torch.float64))
    out = engine.run(feats)
    assert list(out) == list(heads)
    for name, head in heads.items():
        ref = head(feats, bb)
        assert out[name].shape == ref.shape == (batch, head.config.num_classes)
        assert (out[name] - ref).abs().max().item() < 1e-10, name


def test_engine_float32_tolerance(micro_backbone):
    heads = _heads(micro_backbone, MIXED, torch.float32)
    engine = MultiTaskEngine(micro_backbone, heads)
    images = torch.randn(2, 3, 32, 32)
    out = engine.classify(images)
    feats = micro_backbone.forward_features(images)
    for name, head in heads.items():
        assert torch.allclose(out[name], head(feats, micro_backbone), atol=1e-4, rtol=1e-4)


def test_avg_backbone_engine(micro_avg_backbone64):
    bb = micro_avg_backbone64
    heads = _heads(bb, MIXED[:3] + [dict(horizontal="adapter", vertical="adapter", dim=4, pooling="token")], torch.float64)
    engine = MultiTaskEngine(bb, heads)
    feats = bb.forward_features(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    for name, logits in engine.run(feats).items():
        assert (logits - heads[name](feats, bb)).abs().max().item() < 1e-10


def test_subset_of_tasks_in_requested_order(micro_backbone64):
    bb = micro_backbone64
    heads = _heads(bb, MIXED, torch.float64)
    engine = MultiTaskEngine(bb, heads)
    feats = bb.forward_features(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    out = engine.run(feats, ["task1", "task6", "task0"])
    assert list(out) == ["task1", "task6", "task0"]
    for name in out:
        assert (out[name] - heads[name](feats, bb)).abs().max().item() < 1e-10
    again = engine.run(feats, ["task1", "task6", "task0"])  # from the subset cache
    assert all(torch.equal(again[n], out[n]) for n in out)


def test_unknown_task_names_it(micro_backbone):
    engine = MultiTaskEngine(micro_backbone, _heads(micro_backbone, MIXED[:1], torch.float32))
    with pytest.raises(InputError, match="unknown tasks \\['nope'\\]"):
        engine.run(micro_backbone.forward_features(torch.randn(1, 3, 32, 32)), ["nope"])


def test_wrong_feature_count(micro_backbone):
    engine = MultiTaskEngine(micro_backbone, _heads(micro_backbone, MIXED[:1], torch.float32))
    with pytest.raises(InputError, match="expected 4 feature tensors"):
        engine.run([torch.zeros(1, 17, 32)] * 2)


def test_engine_uses_one_token_for_class_token_heads(micro_backbone64, monkeypatch):
    """Class-token groups see [B, 1, D] per layer, mean-pooled ones all patch tokens."""
    from restuning.kernels import reference

    seen = []
    original = reference.bypass_stage

    def spy(x, b, w, s):
        seen.append((w.pooling, x.shape[0]))
        return original(x, b, w, s)

    monkeypatch.setattr(reference, "bypass_stage", spy)
    bb = micro_backbone64
    heads = _heads(bb, [MIXED[0], MIXED[5]], torch.float64)
    engine = MultiTaskEngine(bb, heads)
    engine.run(bb.forward_features(torch.randn(2, 3, 32, 32, dtype=torch.float64)))
    assert {("token", 2), ("avg", 2 * 16)} == set(seen)


def test_an_exported_head_put_back_gives_the_same_logits(micro_backbone64):
    """export / put_packed (the host tier of evicted heads): the slot comes back bit for bit, every group kind;
    a group laid out anew since the export refuses it, and nothing changes."""
    bb = micro_backbone64
    heads = _heads(bb, MIXED, torch.float64)
    engine = MultiTaskEngine(bb, heads, initial_capacity=2)
    feats = bb.forward_features(torch.randn(3, 3, 32, 32, dtype=torch.float64))
    before = engine.run(feats)
    packed = {name: engine.export(name) for name in heads}
    for name in heads:
        engine.remove(name)
    for i in range(5):  # other heads take the freed slots; the groups grow
        engine.put(f"other{i}", heads[f"task{i % 3}"])
    for name, p in packed.items():
        assert p.content["lam"].device.type == "cpu" and p.nbytes > 0
        assert engine.put_packed(name, p, tag=("tag", name))
    after = engine.run(feats, list(heads))
    for name in heads:
        assert torch.equal(before[name], after[name]), name
    routed = engine.run_routed(feats, [["task2"], ["task0", "task5"], ["task7"]], tags=True)
    assert routed[1]["task0"][1] == ("tag", "task0")
    wider = BypassConfig.create(bb.info, num_classes=2, horizontal="adapter", vertical="adapter", dim=16)
    engine.put("wide", build_bypass(wider, bb.embed_dim, seed=0))  # task0's group now holds hidden size 16
    engine.remove("task0")
    assert not engine.put_packed("task0", packed["task0"]) and "task0" not in engine


def test_a_head_packed_without_placing_it_serves_as_if_it_had_been_put(micro_backbone64):
    """pack (the host tier filling itself at start): putting the packed head gives the logits `put` gives, bit for
    bit, in every group kind; a head with no group yet, or wider than its group, is not packed (None), and packing
    places nothing."""
    bb = micro_backbone64
    heads = _heads(bb, MIXED, torch.float64)
    engine = MultiTaskEngine(bb, heads)
    feats = bb.forward_features(torch.randn(3, 3, 32, 32, dtype=torch.float64))
    for name, head in heads.items():
        before = sorted(engine.names)
        p = engine.pack(head, tag=("tag", name))
        assert p is not None and sorted(engine.names) == before  # packing places nothing
        assert engine.put_packed(f"{name}-packed", p, tag=p.tag)
    for name in heads:  # one head per run, so both are computed alike
        assert torch.equal(engine.run(feats, [name])[name], engine.run(feats, [f"{name}-packed"])[f"{name}-packed"])
    wider = BypassConfig.create(bb.info, num_classes=2, horizontal="adapter", vertical="adapter", dim=64)
    assert engine.pack(build_bypass(wider, bb.embed_dim, seed=0).to(torch.float64)) is None
    empty = MultiTaskEngine(bb)
    assert empty.pack(heads["task0"]) is None and not empty.groups
