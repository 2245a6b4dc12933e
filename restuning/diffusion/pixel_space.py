"""A pixel-space stand-in for the VAE: space-to-depth, exact and weightless.

Stable Diffusion denoises in the latent space of a trained VAE. A model trained here on 2 CPU cores cannot
afford to train a VAE as well, and a VAE trained only on the base model's scenes could not draw what a style
adds (a VAE reconstructs what it was trained on; stripes or a blur it never saw come back wrong). So the
`tiny-trained` model denoises pixels instead, folded into a smaller grid: `PixelUnshuffleAutoencoder` maps an
image [B, 3, H, W] in [-1, 1] to latents [B, 3·f², H/f, W/f] with `pixel_unshuffle` (every f×f patch becomes
the channels of one latent pixel) and back with `pixel_shuffle`. It is invertible bit for bit, has no weights,
and answers the calls the pipeline and the style trainer make on `AutoencoderKL`:

    vae.encode(x).latent_dist.sample(generator=...)    # the latents (a point mass: nothing to sample)
    vae.decode(z).sample                               # the image
    vae.config.scaling_factor, vae.config.downscale_factor

In a model directory it is `vae/config.json` with `"_class_name": "PixelUnshuffleAutoencoder"` and no weight
file (`restuning.diffusion.loading` builds it from the config).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from restuning.errors import ConfigError, InputError

PIXEL_SPACE_CLASS = "PixelUnshuffleAutoencoder"


@dataclass
class PointMass:
    """The 'posterior' of a deterministic encoder: sampling returns the latents themselves."""

    latents: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latents

    def mode(self) -> torch.Tensor:
        return self.latents


class PixelUnshuffleAutoencoder(nn.Module):
    """Images [B, C, H, W] <-> latents [B, C·f², H/f, W/f] by pixel (un)shuffle; see the module docstring."""

    def __init__(self, downscale_factor: int = 4, in_channels: int = 3, scaling_factor: float = 1.0):
        super().__init__()
        problems = []
        if not isinstance(downscale_factor, int) or isinstance(downscale_factor, bool) or downscale_factor < 1:
            problems.append(f"downscale_factor must be a positive integer, got {downscale_factor!r}")
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            problems.append(f"in_channels must be a positive integer, got {in_channels!r}")
        if not isinstance(scaling_factor, (int, float)) or isinstance(scaling_factor, bool) or scaling_factor <= 0:
            problems.append(f"scaling_factor must be a positive number, got {scaling_factor!r}")
        if problems:
            raise ConfigError(problems)
        self.config = SimpleNamespace(
            _class_name=PIXEL_SPACE_CLASS, downscale_factor=downscale_factor, in_channels=in_channels,
            out_channels=in_channels, latent_channels=in_channels * downscale_factor ** 2,
            scaling_factor=float(scaling_factor),
        )
        # A buffer, so .to(device, dtype) moves something and tells the codec which dtype to emit.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @classmethod
    def from_config(cls, config: dict) -> PixelUnshuffleAutoencoder:
        if config.get("_class_name") != PIXEL_SPACE_CLASS:
            raise ConfigError(f"not a {PIXEL_SPACE_CLASS} config: _class_name is {config.get('_class_name')!r}")
        known = {"downscale_factor", "in_channels", "scaling_factor"}
        return cls(**{k: v for k, v in config.items() if k in known})

    def to_config(self) -> dict:
        c = self.config
        return {"_class_name": PIXEL_SPACE_CLASS, "downscale_factor": c.downscale_factor,
                "in_channels": c.in_channels, "scaling_factor": c.scaling_factor}

    @property
    def downscale_factor(self) -> int:
        return self.config.downscale_factor

    def encode(self, images: torch.Tensor) -> SimpleNamespace:
        f = self.downscale_factor
        if images.dim() != 4 or images.shape[1] != self.config.in_channels or images.shape[-1] % f \
                or images.shape[-2] % f:
            raise InputError(f"the pixel-space codec takes images [B, {self.config.in_channels}, H, W] with H and W "
                              f"multiples of {f}, got {list(images.shape)}")
        return SimpleNamespace(latent_dist=PointMass(F.pixel_unshuffle(images.to(self._anchor.dtype), f)))

    def decode(self, latents: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=F.pixel_shuffle(latents.to(self._anchor.dtype), self.downscale_factor))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images).latent_dist.mode()).sample


def vae_scale_factor(vae) -> int:
    """Pixels per latent pixel along one side: the codec's factor, or 2^(resolutions − 1) for an AutoencoderKL."""
    factor = getattr(vae.config, "downscale_factor", None)
    if factor is not None:
        return int(factor)
    return 2 ** (len(vae.config.block_out_channels) - 1)
