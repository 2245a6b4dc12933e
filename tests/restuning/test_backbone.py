import pytest
import torch
from safetensors.torch import save_file

from restuning.backbones import create_backbone, describe_backbone, parse_weights
from restuning.errors import ConfigError, InputError


def test_features_are_x0_and_every_block_output(micro_backbone):
    bb = micro_backbone
    images = torch.randn(2, 3, 32, 32)
    feats = bb.forward_features(images)
    assert len(feats) == bb.depth + 1 == 4
    assert all(f.shape == (2, bb.info.num_tokens, bb.embed_dim) for f in feats)
    assert not any(f.requires_grad for f in feats)
    m = bb.model
    x0 = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))
    assert torch.allclose(feats[0], x0)
    x = x0
    for i, block in enumerate(m.blocks):
        x = block(x)
        assert torch.allclose(feats[i + 1], x, atol=1e-6)
    # the backbone's own pooled output equals pool(final_norm(x_L))
    own = m.forward_head(m.forward_features(images), pre_logits=True)
    assert torch.allclose(bb.pool(feats[-1][:, bb.token_positions("token")]), own, atol=1e-6)


def test_forward_builds_no_graph_even_with_grad_enabled(micro_backbone):
    with torch.enable_grad():
        feats = micro_backbone.forward_features(torch.randn(1, 3, 32, 32, requires_grad=True))
    assert all(f.grad_fn is None for f in feats)
    assert not any(p.requires_grad for p in micro_backbone.parameters())


def test_avg_pooling_backbone(micro_avg_backbone64):
    bb = micro_avg_backbone64
    assert bb.info.pooling == "avg"
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    feats = bb.forward_features(images)
    own = bb.model.forward_head(bb.model.forward_features(images), pre_logits=True)
    mine = bb.pool(feats[-1][:, bb.token_positions("avg")])
    assert torch.allclose(mine, own, atol=1e-10)


def test_random_weights_are_deterministic_and_fingerprinted():
    a = create_backbone("restune_vit_micro", weights="random:0")
    b = create_backbone("restune_vit_micro", weights="random")
    c = create_backbone("restune_vit_micro", weights="random:1")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(a.forward_features(x)[-1], b.forward_features(x)[-1])
    assert len(a.fingerprint()) == 64


def test_fingerprint_survives_dtype_cast():
    a = create_backbone("restune_vit_micro", weights="random:0")
    b = create_backbone("restune_vit_micro", weights="random:0", dtype=torch.float16)
    assert a.fingerprint() == b.fingerprint()


def test_safetensors_weights_file(tmp_path, micro_backbone):
    path = tmp_path / "w.safetensors"
    other = create_backbone("restune_vit_micro", weights="random:7")
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, str(path))
    loaded = create_backbone("restune_vit_micro", weights=str(path))
    assert loaded.fingerprint() == other.fingerprint() != micro_backbone.fingerprint()
    assert loaded.info.weights == "file:w.safetensors"


def test_weights_file_of_wrong_model_is_rejected(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"foo": torch.zeros(3)}, str(path))
    with pytest.raises(ConfigError, match="do not fit"):
        create_backbone("restune_vit_micro", weights=str(path))


@pytest.mark.parametrize("bad", ["pickle.pt", "random:x", "nonsense"])
def test_bad_weights_spec(bad):
    with pytest.raises(ConfigError):
        parse_weights(bad)


def test_unknown_backbone_names_choices():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet50'.*vit_base_patch16_224"):
        create_backbone("resnet50")


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.randn(1, 3, 16, 16), r"shape \[B, 3, 32, 32\]"),
        (torch.randn(3, 32, 32), r"shape \[B, 3, 32, 32\]"),
        (torch.randn(1, 1, 32, 32), r"shape \[B, 3, 32, 32\]"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating-point"),
        (torch.zeros(0, 3, 32, 32), "at least one image"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_images(micro_backbone, images, match):
    with pytest.raises(InputError, match=match):
        micro_backbone.forward_features(images)


def test_timm_vit_tiny_by_name():
    bb = create_backbone("vit_tiny_patch16_224", weights="random:0")
    assert (bb.embed_dim, bb.depth, bb.info.num_tokens, bb.info.pooling) == (192, 12, 197, "token")
    feats = bb.forward_features(torch.randn(1, 3, 224, 224))
    assert len(feats) == 13 and feats[0].shape == (1, 197, 192)


def test_describe_backbone_needs_no_weights():
    info, params = describe_backbone("vit_base_patch16_224")
    assert (info.embed_dim, info.depth, info.num_tokens) == (768, 12, 197)
    assert 85.7e6 < params < 85.9e6  # paper: 85.8M
