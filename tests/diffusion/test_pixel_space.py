"""The pixel-space codec that stands in for the VAE of models trained here, and model directories that use it."""
from __future__ import annotations

import json

import pytest
import torch

from restuning.diffusion.pixel_space import PixelUnshuffleAutoencoder, vae_scale_factor
from restuning.errors import ConfigError, InputError


def test_codec_round_trip_is_exact_and_folds_patches_into_channels():
    codec = PixelUnshuffleAutoencoder(4)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = codec.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(1))
    assert latents.shape == (2, 48, 8, 8)
    # latent pixel (i, j) holds the 4×4 patch at (4i, 4j): channel c·16 + 4·dy + dx
    assert torch.equal(latents[1, 2 * 16 + 4 * 3 + 1, 5, 6], images[1, 2, 4 * 5 + 3, 4 * 6 + 1])
    assert torch.equal(codec.decode(latents).sample, images)
    assert torch.equal(codec.encode(images).latent_dist.mode(), latents)
    assert vae_scale_factor(codec) == 4 and codec.config.latent_channels == 48


def test_codec_follows_dtype_and_refuses_bad_input():
    codec = PixelUnshuffleAutoencoder(2).to(torch.float64)
    assert codec.encode(torch.zeros(1, 3, 8, 8)).latent_dist.sample().dtype == torch.float64
    with pytest.raises(InputError, match=r"images \[B, 3, H, W\] with H and W multiples of 2, got \[1, 3, 7, 8\]"):
        codec.encode(torch.zeros(1, 3, 7, 8))
    with pytest.raises(ConfigError) as info:
        PixelUnshuffleAutoencoder(0, in_channels=-1, scaling_factor=0)
    assert len(info.value.problems) == 3
    with pytest.raises(ConfigError, match="not a PixelUnshuffleAutoencoder config"):
        PixelUnshuffleAutoencoder.from_config({"_class_name": "AutoencoderKL"})
    assert PixelUnshuffleAutoencoder.from_config(codec.to_config()).to_config() == codec.to_config()


def test_vae_scale_factor_of_an_autoencoder_kl(tiny_pipe):
    assert vae_scale_factor(tiny_pipe.vae) == 4 == tiny_pipe.vae_scale_factor


def test_a_pixel_space_directory_saves_loads_and_generates(tmp_path):
    from diffusers import UNet2DConditionModel

    from restuning.diffusion.loading import DiffusionComponents, build_tiny_random, save_components
    from restuning.diffusion.pipeline import StylePipeline

    tiny = build_tiny_random()
    config = {**dict(tiny.unet.config), "in_channels": 12, "out_channels": 12, "sample_size": 8}
    unet = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    components = DiffusionComponents("pixels", unet, PixelUnshuffleAutoencoder(2), tiny.text_encoder, tiny.tokenizer,
                                     tiny.scheduler_config, "test")
    model_dir = save_components(components, tmp_path / "pixels")
    assert sorted(p.name for p in (model_dir / "vae").iterdir()) == ["config.json"]  # no weights to store
    assert json.loads((model_dir / "vae" / "config.json").read_text())["_class_name"] == "PixelUnshuffleAutoencoder"
    pipe = StylePipeline.load(str(model_dir))
    assert pipe.vae_scale_factor == 2 and pipe.default_size == 16 and pipe.size_multiple == 16
    result = pipe.generate(["a cat"], ["base"], {}, steps=2, seed=0, height=32, width=32)
    assert result.images[0].image.size == (32, 32)

    # A codec whose latents do not fit the U-Net is refused with both numbers.
    (model_dir / "vae" / "config.json").write_text(json.dumps(PixelUnshuffleAutoencoder(4).to_config()))
    with pytest.raises(ConfigError, match=r"the vae's latents have 48 channels; the U-Net takes 12"):
        StylePipeline.load(str(model_dir))
