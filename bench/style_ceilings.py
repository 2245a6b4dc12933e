"""How far a style could go on a model, so `bench styles` can say whether a tuner or the model is what falls short.

Two ceilings per style, each over the benchmark's own generated base images:

- **transform ceiling**: the style's transform (`training.style_sets`) applied in code to each base image. It is
  what a perfect restyling of those very images scores, so it bounds the statistic itself.
- **head ceiling**: the closest any bypass could come to that restyling. The bypass replaces the input of the
  U-Net's conv_norm_out (`restuning.diffusion.bypass`); whatever it outputs then passes through the frozen
  conv_norm_out (GroupNorm), conv_act and conv_out. Here that input is a free tensor per image, optimised (Adam)
  so that the U-Net's output is the transform ceiling's image. On a model that predicts the clean image
  (`tiny-trained`), that output *is* the image, so no bypass of any size, trained any way, can come closer (in
  mean squared error) to the restyled images than these. (A bypass could still score a statistic higher with
  images that are further from them; this bounds a faithful restyling, not every image the head can draw.) A model that
  predicts noise (Stable Diffusion) has no such direct reading; the head ceiling is then not taken.
"""
from __future__ import annotations

from restuning.errors import ConfigError

# torch and numpy are imported where used: `restune bench --help` reads the defaults below without them.

# Adam steps. Measured on tiny-trained (48 generated base images, with the earlier 2-px stripes): from 1,500 to
# 2,000 steps the MSE fell by 0.17 % (crimson) and 0.01 % (stripes); blur's stayed below 2e-5.
HEAD_CEILING_STEPS = 2000
HEAD_CEILING_LR = 0.05


def transform_images(spec, images):
    """The style's transform applied to each uint8 image [N, H, W, 3]."""
    import numpy as np  # not at import: `restune bench --help` reads this module's defaults

    return np.stack([spec.transform(img) for img in images])


def head_ceiling_images(pipeline, targets, *, steps: int = HEAD_CEILING_STEPS, lr: float = HEAD_CEILING_LR,
                        seed: int = 0, chunk: int = 64):
    """The images closest to `targets` (uint8 [N, H, W, 3]) that the frozen head can output (uint8, same shape),
    and the final MSE in latent space.

    Raises ConfigError for a model that does not predict the clean image (see the module docstring).
    """
    import numpy as np  # not at import: `restune bench --help` reads this module's defaults
    import torch
    from torch.nn import functional as F

    if pipeline.prediction_type != "sample":
        raise ConfigError(f"the head ceiling needs a model that predicts the clean image; {pipeline.name!r} "
                          f"predicts {pipeline.prediction_type!r}")
    if steps < 1:
        raise ConfigError(f"the head ceiling needs at least one optimisation step, got {steps}")
    unet = pipeline.unet.unet
    head = torch.nn.Sequential(unet.conv_norm_out, unet.conv_act, unet.conv_out)
    channels = pipeline.tap_channels[-1]
    gen = torch.Generator().manual_seed(seed)
    out, losses = [], []
    for start in range(0, len(targets), chunk):
        pixels = torch.from_numpy(targets[start:start + chunk]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        latents = pipeline.encode_images(pixels).float()
        n, _, h, w = latents.shape
        features = torch.randn((n, channels, h, w), generator=gen).to(pipeline.device).requires_grad_(True)
        optimizer = torch.optim.Adam([features], lr=lr)
        with torch.autocast(pipeline.device.type, enabled=False):
            for _ in range(steps):
                loss = F.mse_loss(head(features.to(pipeline.dtype)).float(), latents)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            best = head(features.to(pipeline.dtype)).float()
            losses.append(F.mse_loss(best, latents).item() * n)
        out.extend(np.asarray(img) for img in pipeline.decode_latents(best))
    return np.stack(out), sum(losses) / len(targets)
