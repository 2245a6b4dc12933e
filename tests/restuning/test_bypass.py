import pytest
import torch

from restuning.bypass import BypassConfig, build_bypass
from restuning.errors import ConfigError


def _config(bb, **kw):
    kw.setdefault("num_classes", 5)
    return BypassConfig.create(bb.info, **kw)


def test_bypass_follows_eq8(micro_backbone64):
    bb = micro_backbone64
    head = build_bypass(_config(bb, dim=4), bb.embed_dim, seed=0).double()
    with torch.no_grad():
        head.lambda_logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
    feats = bb.forward_features(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    pos = bb.token_positions("token")
    x = [f[:, pos] for f in feats]
    b = x[0]
    for i, layer in enumerate((1, 2, 3)):
        lam = torch.sigmoid(head.lambda_logits[i])
        h = x[layer] + head.horizontal[i](x[layer])
        v = b + head.vertical[i](b)
        b = lam * h + (1 - lam) * v
    pooled = bb.model.fc_norm(bb.model.norm(b)[:, 0])
    expected = pooled @ head.head.weight.t() + head.head.bias
    assert torch.allclose(head(feats, bb), expected, atol=1e-12)


def test_lambda_starts_at_half(micro_backbone):
    head = build_bypass(_config(micro_backbone), micro_backbone.embed_dim)
    assert torch.allclose(head.lambdas, torch.full((3,), 0.5))


def test_class_token_shortcut_equals_full_computation(micro_backbone64):
    """Every tuner is token-wise: running the bypass on all tokens and then taking the
    class token gives exactly what running it on the class token alone gives."""
    bb = micro_backbone64
    for h, v in [("adapter", "adapter"), ("prefix", "prompt"), ("prompt", "adapter")]:
        head = build_bypass(_config(bb, horizontal=h, vertical=v, dim=6), bb.embed_dim, seed=3).double()
        feats = bb.forward_features(torch.randn(3, 3, 32, 32, dtype=torch.float64))
        full_b = head.bypass(feats)  # all 17 tokens
        full_logits = head.head(bb.model.fc_norm(bb.model.norm(full_b)[:, 0]))
        short_logits = head(feats, bb)  # one token per layer
        assert torch.allclose(full_logits, short_logits, atol=1e-12)


def test_gradients_reach_only_the_bypass(micro_backbone):
    bb = micro_backbone
    head = build_bypass(_config(bb), bb.embed_dim, seed=0)
    feats = bb.forward_features(torch.randn(4, 3, 32, 32))
    loss = torch.nn.functional.cross_entropy(head(feats, bb), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())
    assert all(p.grad is None for p in bb.parameters())
    assert head.lambda_logits.grad.abs().sum() > 0


def test_partial_layers(micro_backbone):
    cfg = _config(micro_backbone, layers="1,3")
    head = build_bypass(cfg, micro_backbone.embed_dim)
    assert cfg.layers == (1, 3) and len(head.horizontal) == 2
    assert head(micro_backbone.forward_features(torch.randn(1, 3, 32, 32)), micro_backbone).shape == (1, 5)


def test_config_json_round_trip(micro_backbone):
    cfg = _config(micro_backbone, horizontal="prefix", vertical="none", dim=7, layers="2-3", pooling="avg")
    again = BypassConfig.from_json(cfg.to_json(), micro_backbone.info)
    assert again == cfg
    assert cfg.to_json()["vertical"] == {"type": "none", "dim": 0}


def test_config_errors_all_at_once(micro_backbone):
    with pytest.raises(ConfigError) as err:
        _config(micro_backbone, horizontal="lora", vertical="adapter", dim=-1, layers="0,9", pooling="max", num_classes=0)
    problems = err.value.problems
    assert len(problems) >= 5
    text = str(err.value)
    for needle in ["'lora'", "dim must be a positive integer", "out of range", "'max'", "num_classes"]:
        assert needle in text


def test_from_json_missing_keys(micro_backbone):
    with pytest.raises(ConfigError, match="missing 'layers'"):
        BypassConfig.from_json({"num_classes": 3, "horizontal": {}, "vertical": {}, "pooling": "token"}, micro_backbone.info)
