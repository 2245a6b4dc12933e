"""The U-Net bypass module on its own (torch only): structure, zero-init exactness, group adapters, validation."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from restuning.diffusion.bypass import (
    GroupAdapter,
    UNetBypassConfig,
    build_unet_bypass,
    bypass_from_state,
    expected_state_shapes,
)
from restuning.errors import ConfigError

TINY_TAPS = [64, 64, 64, 64, 64, 32]
SD15_TAPS = [1280, 1280, 1280, 1280, 640, 320]


def random_taps(channels, sizes, batch=2, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, s, s, generator=gen, dtype=dtype) for c, s in zip(channels, sizes)]


def test_untrained_bypass_returns_the_last_tap_bitwise():
    bypass = build_unet_bypass(UNetBypassConfig.create(TINY_TAPS), seed=0)
    taps = random_taps(TINY_TAPS, [2, 2, 4, 8, 16, 16])
    out = bypass(taps)
    assert torch.equal(out, taps[-1])  # exact, not approximately: H(t) = t + 0, V(0) = 0
    # …while the earlier stages are not trivial: their adapters are randomly initialised.
    assert bypass.stages[0].horizontal.up.weight.abs().sum() > 0


def test_group_adapter_is_one_adapter_over_contiguous_channel_groups():
    torch.manual_seed(0)
    adapter = GroupAdapter(channels=12, groups=3, scale_factor=2).double()
    x = torch.randn(2, 12, 3, 5, dtype=torch.float64)
    expected = torch.empty_like(x)
    for g in range(3):
        part = x[:, 4 * g:4 * (g + 1)].permute(0, 2, 3, 1)  # [B, H, W, 4]: one row per pixel
        branch = F.linear(F.gelu(F.linear(part, adapter.down.weight, adapter.down.bias)),
                          adapter.up.weight, adapter.up.bias)
        expected[:, 4 * g:4 * (g + 1)] = (part + branch).permute(0, 3, 1, 2)
    torch.testing.assert_close(adapter(x), expected, rtol=0, atol=1e-12)


def test_parameter_count_formula_matches_the_module_sd15_and_tiny():
    for taps, expected in ((SD15_TAPS, 3_933_920), (TINY_TAPS, None)):
        config = UNetBypassConfig.create(taps)
        with torch.device("meta"):
            module = build_unet_bypass(config)
        n = sum(p.numel() for p in module.parameters())
        assert config.num_params()["total"] == n
        if expected is not None:
            assert n == expected
    # The reference's dense 3×3 convs would cost 41.4M on SD v1.5, 11× the paper's 3.76M for the whole bypass.
    assert UNetBypassConfig.create(SD15_TAPS, conv_groups=1).num_params()["total"] == 41_431_520


def test_config_validation_lists_every_problem_with_valid_choices():
    with pytest.raises(ConfigError) as info:
        UNetBypassConfig.create([64, 32, 48], groups=5, scale_factor=0, conv_groups=7)
    text = str(info.value)
    assert len(info.value.problems) == 4
    assert "channels[0] (mid_block input, 64) must equal channels[1]" in text
    assert "groups 5 does not divide" in text and "valid choices: [1, 2, 4, 8, 16]" in text
    assert "scale_factor must be a positive integer" in text
    assert "conv_groups 7" in text


def test_expected_state_shapes_match_the_module_and_reject_bad_configs():
    config = UNetBypassConfig.create(TINY_TAPS)
    tuner = config.to_json()
    shapes = expected_state_shapes(tuner, {"name": "tiny", "tap_channels": TINY_TAPS})
    module = build_unet_bypass(config)
    assert shapes == {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes["stages.0.upsample.conv.weight"] == (64, 2, 3, 3)  # 32 conv groups: 64/32 input channels each
    assert "stages.4.upsample.conv.weight" not in shapes  # the last stage has no conv

    with pytest.raises(ConfigError, match="do not match the U-Net's tap channels"):
        expected_state_shapes(tuner, {"name": "other", "tap_channels": SD15_TAPS})
    with pytest.raises(ConfigError) as info:
        expected_state_shapes({**tuner, "type": "lora", "colour": "red", "groups": 0}, {})
    text = str(info.value)
    assert "unknown keys ['colour']" in text and "tuner type must be 'unet_bypass'" in text
    assert "groups must be a positive integer" in text
    with pytest.raises(ConfigError, match="tuner is missing"):
        expected_state_shapes({"type": "unet_bypass", "format": 1}, {})


def test_bypass_from_state_round_trip_and_shape_errors():
    config = UNetBypassConfig.create(TINY_TAPS)
    module = build_unet_bypass(config, seed=3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    loaded = bypass_from_state(config.to_json(), state)
    taps = random_taps(TINY_TAPS, [2, 2, 4, 8, 16, 16])
    assert torch.equal(loaded(taps), module(taps))
    bad = dict(state)
    bad["stages.0.horizontal.down.weight"] = torch.zeros(3, 3)
    del bad["stages.1.vertical.up.bias"]
    with pytest.raises(ConfigError) as info:
        bypass_from_state(config.to_json(), bad)
    assert "missing tensors the config requires: ['stages.1.vertical.up.bias']" in str(info.value)
    assert "stages.0.horizontal.down.weight' has shape [3, 3]" in str(info.value)


def test_wrong_taps_are_a_clear_error():
    from restuning.errors import InputError

    bypass = build_unet_bypass(UNetBypassConfig.create(TINY_TAPS))
    with pytest.raises(InputError, match="expects 6 feature maps with channels"):
        bypass(random_taps(TINY_TAPS[:-1], [2, 2, 4, 8, 16]))


def test_package_import_is_light():
    """The tuner store imports restuning.diffusion to validate artifacts: that must not pull in diffusers."""
    code = ("import sys, restuning.diffusion, restuning.diffusion.pipeline, restuning.diffusion.routing\n"
            "heavy = [m for m in ('diffusers', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
