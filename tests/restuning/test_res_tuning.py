import pytest
import torch

from restuning.errors import ConfigError
from restuning.res_tuning import ResTuningConfig, ResTuningViT


@pytest.mark.parametrize("mha, ffn, block", [("adapter", None, None), ("prefix", "adapter", None), ("adapter", "prompt", "adapter")])
def test_starts_at_the_backbone_and_trains_only_tuners(micro_backbone, mha, ffn, block):
    bb = micro_backbone
    cfg = ResTuningConfig.create(bb, num_classes=4, mha=mha, ffn=ffn, block=block, dim=4)
    model = ResTuningViT(bb, cfg)
    images = torch.randn(2, 3, 32, 32)
    # zero-initialised last layers: the tuned network reproduces the frozen features at init
    pooled_ref = bb.pool(bb.forward_features(images)[-1][:, bb.token_positions("token")])
    assert torch.allclose(model(images), model.head(pooled_ref), atol=1e-5)
    loss = model(images).square().mean()
    loss.backward()
    trainable = model.trainable_parameters()
    assert all(p.grad is not None for p in trainable)
    assert all(p.grad is None for p in model.model.parameters() if not p.requires_grad)
    assert not any(p.requires_grad for p in bb.parameters())


def test_gradients_flow_through_the_backbone_to_early_tuners(micro_backbone):
    cfg = ResTuningConfig.create(micro_backbone, num_classes=3, mha="adapter", ffn=None, dim=4)
    model = ResTuningViT(micro_backbone, cfg)
    with torch.no_grad():  # move the first tuner off zero so its input gradient is non-trivial
        model.model.blocks[0].tuners["mha"].up.weight.normal_()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.model.blocks[0].tuners["mha"].down.weight.grad.abs().sum() > 0


def test_bad_config(micro_backbone):
    with pytest.raises(ConfigError, match="'lora'.*out of range"):
        ResTuningConfig.create(micro_backbone, num_classes=3, mha="lora", layers="9")
