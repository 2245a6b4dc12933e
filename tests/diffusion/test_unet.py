"""The frozen U-Net with bypass taps: capture points, exact zero-init, replacement of conv_norm_out's input,
no autograd graph in the frozen parts, fingerprint, and loading (directory, safetensors only, SD v1.5 dims)."""
from __future__ import annotations

import pytest
import torch

from restuning.errors import ConfigError


def _inputs(pipe, batch=2, latent=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, latent, latent, generator=gen)
    context = pipe.encode_prompts(["a red house", "a blue boat"][:batch])
    return x, context


def test_capture_points_have_the_shapes_of_each_block(tiny_pipe):
    # tiny-random: block_out_channels (32, 64, 64, 64); three down blocks halve the latent grid.
    for latent in (8, 16):
        x, context = _inputs(tiny_pipe, latent=latent)
        with torch.no_grad():
            _, taps = tiny_pipe.unet.capture(x, 500, context)
        low = latent // 8
        assert tiny_pipe.unet.tap_names == ["mid_block.input", "mid_block.output", "up_blocks.0.output",
                                            "up_blocks.1.output", "up_blocks.2.output", "up_blocks.3.output"]
        assert [tuple(t.shape) for t in taps] == [
            (2, 64, low, low), (2, 64, low, low), (2, 64, 2 * low, 2 * low), (2, 64, 4 * low, 4 * low),
            (2, 64, 8 * low, 8 * low), (2, 32, 8 * low, 8 * low)]


def test_sd15_tap_shapes_and_parameter_count_on_the_meta_device():
    from restuning.diffusion.describe import describe_diffusion

    d = describe_diffusion("sd-v1.5")
    assert d["unet_params"] == 859_520_964
    assert d["trainable_params"] == 3_933_920
    assert d["breakdown"] == {"adapters": 2_720_800, "upsample_convs": 1_213_120}
    assert d["tap_shapes_batch1"] == {
        "mid_block.input": [1, 1280, 8, 8], "mid_block.output": [1, 1280, 8, 8],
        "up_blocks.0.output": [1, 1280, 16, 16], "up_blocks.1.output": [1, 1280, 32, 32],
        "up_blocks.2.output": [1, 640, 64, 64], "up_blocks.3.output": [1, 320, 64, 64]}
    assert d["paper"]["trainable_params"] == 3_760_000 and abs(d["paper"]["ratio"] - 1.046) < 1e-3


def test_zero_init_tuner_reproduces_the_base_unet_bitwise(tiny_pipe):
    x, context = _inputs(tiny_pipe)
    tuner = tiny_pipe.new_tuner(seed=7)
    with torch.no_grad():
        base = tiny_pipe.unet.unet(x, 321, context).sample  # diffusers' own forward, no taps active
        with_tuner = tiny_pipe.unet(x, 321, context, bypass=tuner)
    assert torch.equal(base, with_tuner)


def test_bypass_output_replaces_the_input_of_conv_norm_out(tiny_pipe):
    x, context = _inputs(tiny_pipe)
    unet = tiny_pipe.unet.unet
    with torch.no_grad():
        _, taps = tiny_pipe.unet.capture(x, 100, context)
        doubled = tiny_pipe.unet(x, 100, context, bypass=lambda t: 2 * t[-1])
        expected = unet.conv_out(unet.conv_act(unet.conv_norm_out(2 * taps[-1])))
        plain = unet(x, 100, context).sample  # hooks are inactive outside a tapped call
    torch.testing.assert_close(doubled, expected, rtol=0, atol=0)
    assert not torch.equal(doubled, plain)


def test_training_builds_no_graph_inside_the_frozen_unet(tiny_pipe):
    x, context = _inputs(tiny_pipe)
    tuner = tiny_pipe.new_tuner(seed=1).train()
    seen = {}

    def bypass(taps):
        seen["taps"] = taps
        return tuner(taps)

    out = tiny_pipe.unet(x, 200, context, bypass=bypass)
    assert all(not t.requires_grad and t.grad_fn is None for t in seen["taps"])
    assert out.requires_grad
    out.square().mean().backward()
    assert all(p.grad is None for p in tiny_pipe.unet.unet.parameters())
    assert all(p.grad is not None for p in tuner.parameters())


def test_fingerprint_is_stable_and_sensitive(tiny_pipe):
    from restuning.diffusion.loading import build_tiny_random
    from restuning.diffusion.unet import unet_fingerprint

    components = build_tiny_random()
    assert unet_fingerprint(components.unet) == tiny_pipe.fingerprint
    assert build_tiny_random(seed=1).name == "tiny-random:1"
    with torch.no_grad():
        components.unet.conv_out.bias[0] += 1e-3
    assert unet_fingerprint(components.unet) != tiny_pipe.fingerprint


def test_directory_round_trip_and_refusals(tiny_pipe, tmp_path):
    from restuning.diffusion.loading import build_tiny_random, save_components
    from restuning.diffusion.pipeline import StylePipeline

    model_dir = save_components(build_tiny_random(), tmp_path / "sd-tiny")
    pipe = StylePipeline.load(str(model_dir))
    assert pipe.fingerprint == tiny_pipe.fingerprint  # same weights, same U-Net identity
    assert pipe.backbone_json()["tap_channels"] == tiny_pipe.tap_channels
    ids = pipe.tokenizer(["a cat"]).input_ids
    assert ids == tiny_pipe.tokenizer(["a cat"]).input_ids

    # Pickle-based weights are refused, not loaded.
    unet_dir = model_dir / "unet"
    (unet_dir / "diffusion_pytorch_model.safetensors").rename(unet_dir / "diffusion_pytorch_model.bin")
    (model_dir / "vae").rename(model_dir / "vae-moved")
    with pytest.raises(ConfigError) as info:
        StylePipeline.load(str(model_dir))
    text = str(info.value)
    assert "holds only pickle-based weights (diffusion_pytorch_model.bin)" in text
    assert "vae is missing" in text
    with pytest.raises(ConfigError, match="does not exist; give 'tiny-random', 'tiny-trained' or a local diffusers "
                                          "directory"):
        StylePipeline.load(str(tmp_path / "nowhere"))


def test_non_sd_layouts_are_refused():
    from restuning.diffusion.unet import layout_problems

    problems = layout_problems({"block_out_channels": [32, 64], "down_block_types": ["A", "B"],
                                "up_block_types": ["C", "D"], "norm_num_groups": None,
                                "addition_embed_type": "text_time"})
    assert any("no conv_norm_out" in p for p in problems)
    assert any("addition_embed_type='text_time'" in p for p in problems)
