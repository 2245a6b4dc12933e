"""The demo's style sets: procedural scenes (`training.scenes`) restyled in code, and how to measure a style.

Three styles that change an image in three different ways:

| style | what it does | statistic (`style_statistic`) |
|---|---|---|
| `crimson` | a colour palette: every pixel's tone mapped onto a dark-red → crimson → pale-pink ramp | joint RGB histogram (4 bins per channel) |
| `stripes` | a texture: every other pixel row darkened (horizontal stripes, period 2 px) | share of the grey image's AC power at the stripes' frequency |
| `blur` | a soft focus: Gaussian blur, σ = 1.2 px | share of the grey image's AC power above ¼ cycle per pixel |

A style set is scenes drawn from a seed of their own, each saved as `NNN.png` with its scene caption in `NNN.txt`,
so `restune train style --prompt-template '{caption}'` teaches the tuner the style alone, not the content.

Style strength (the demo's benchmark): the distance between the mean statistic of generated images and that of
the style set (L1 over the histogram bins; absolute difference of the scalars), for styled images against the
same distance for base images from the same prompts and seeds: `1 − d(styled) / d(base)` is the share of the
gap the style closed. The two power shares are also taken over the set's pooled power (`pooled=True`), where a
nearly flat image cannot dominate them; the histogram is the same either way.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from training import scenes as scene_data

STYLE_SEED = 1000  # style sets draw scenes from seeds 1000, 1001, … (the base model trains on seed 0)


def _luminance(img: np.ndarray) -> np.ndarray:
    return (img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


CRIMSON_RAMP = np.array([[40, 4, 14], [205, 22, 58], [255, 208, 218]], np.float32)  # at tone 0, ½, 1
# The tone a pixel takes on the ramp. Not luminance: the scenes' red, green and blue shapes have about the
# luminance of the gray or blue backgrounds they stand on, and would vanish. These weights (searched on a
# 0.025 grid) keep every shape colour at least 0.18 of the ramp away from every background it can have.
CRIMSON_TONE = np.array([0.15, 0.075, 0.775], np.float32)


def crimson(img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    y = (img[..., :3].astype(np.float32) @ CRIMSON_TONE)[..., None] / 255.0
    low = CRIMSON_RAMP[0] + (CRIMSON_RAMP[1] - CRIMSON_RAMP[0]) * np.clip(y * 2, 0, 1)
    high = CRIMSON_RAMP[1] + (CRIMSON_RAMP[2] - CRIMSON_RAMP[1]) * np.clip(y * 2 - 1, 0, 1)
    return np.where(y < 0.5, low, high).round().clip(0, 255).astype(np.uint8)


STRIPE_PERIOD = 2
STRIPE_DARKEN = 0.5  # a stripe keeps this share of the brightness


def stripes(img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Every other pixel row darkened, always the odd rows.

    Why this texture and not wider stripes at a random phase (the first version: diagonal, period 4 px, random
    phase; measured: the trained tuner moved the stripe statistic by 0 %): trained to predict the clean image, a
    denoiser can only learn the mean over phases, which is an even darkening with no stripes; and the U-Net and
    the bypass are translation-equivariant, so nothing in them can pick a phase. A 2-px stripe at a fixed phase
    lies inside each 2×2 patch that `tiny-trained` folds into one latent pixel, so it is a per-pixel change of
    channels, which the bypass can learn.
    """
    out = img.astype(np.float32)
    out[STRIPE_PERIOD // 2::STRIPE_PERIOD] *= STRIPE_DARKEN
    return out.round().clip(0, 255).astype(np.uint8)


BLUR_SIGMA = 1.2


def blur(img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(BLUR_SIGMA)))


# -- statistics ----------------------------------------------------------------------------------------------

HIST_BINS = 4


def colour_histogram(images: np.ndarray) -> np.ndarray:
    """Mean joint RGB histogram of uint8 images [N, H, W, 3] (HIST_BINS per channel, sums to 1)."""
    q = (images[..., :3].astype(np.int64) * HIST_BINS) // 256
    codes = (q[..., 0] * HIST_BINS + q[..., 1]) * HIST_BINS + q[..., 2]
    counts = np.stack([np.bincount(c.ravel(), minlength=HIST_BINS ** 3) for c in codes]).astype(np.float64)
    return (counts / counts.sum(1, keepdims=True)).mean(0)


def _power(images: np.ndarray) -> np.ndarray:
    """AC power spectrum of the grey images [N, H, W] (the mean removed)."""
    grey = _luminance(images).astype(np.float64)
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    return np.abs(np.fft.fft2(grey)) ** 2


def _share(power: np.ndarray, mask: np.ndarray) -> np.ndarray:
    total = power.sum(axis=(1, 2))
    return np.where(total > 0, (power * mask).sum(axis=(1, 2)) / np.maximum(total, 1e-12), 0.0)


def _frequencies(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(fy, fx): each FFT bin's frequency in cycles per pixel, down the rows and across."""
    return np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")


def _stripe_mask(h: int, w: int) -> np.ndarray:
    """The stripes' frequency (1 / STRIPE_PERIOD cycles per pixel down the rows, none across), within one bin."""
    fy, fx = _frequencies(h, w)
    return (np.abs(np.abs(fy) - 1.0 / STRIPE_PERIOD) <= 1.0 / h + 1e-9) & (np.abs(fx) <= 1.0 / w + 1e-9)


def _high_frequency_mask(h: int, w: int) -> np.ndarray:
    """Above ¼ cycle per pixel, radially."""
    fy, fx = _frequencies(h, w)
    return np.hypot(fx, fy) > 0.25


def _pooled_share(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of the whole set's AC power in `mask`, as [1]."""
    power = _power(images).sum(axis=0)
    total = power.sum()
    return np.array([(power * mask).sum() / total if total > 0 else 0.0])


def stripe_energy(images: np.ndarray) -> np.ndarray:
    """Mean over the images of each one's share of AC power at the stripes' frequency, as [1]."""
    return np.array([_share(_power(images), _stripe_mask(*images.shape[1:3])).mean()])


def high_frequency_energy(images: np.ndarray) -> np.ndarray:
    """Mean over the images of each one's share of AC power above ¼ cycle per pixel, as [1]: sharp edges have
    much, a blur little."""
    return np.array([_share(_power(images), _high_frequency_mask(*images.shape[1:3])).mean()])


# The same shares taken over the set's pooled power. A mean of per-image shares lets an almost flat image, whose
# small AC power is mostly fine grain, count as much as a whole scene: on 32 generated base images one such image
# had a high-frequency share of 0.236 where most had 0.014-0.024. Reported beside the per-image means.
def stripe_energy_pooled(images: np.ndarray) -> np.ndarray:
    return _pooled_share(images, _stripe_mask(*images.shape[1:3]))


def high_frequency_energy_pooled(images: np.ndarray) -> np.ndarray:
    return _pooled_share(images, _high_frequency_mask(*images.shape[1:3]))


@dataclass(frozen=True)
class StyleSpec:
    name: str
    kind: str  # what changes: palette, texture, focus
    description: str
    transform: Callable[[np.ndarray, np.random.Generator | None], np.ndarray]
    statistic: Callable[[np.ndarray], np.ndarray]
    statistic_name: str
    # the statistic over the set's pooled power, where it differs from the per-image mean (None: it does not)
    pooled_statistic: Callable[[np.ndarray], np.ndarray] | None = None


STYLES: dict[str, StyleSpec] = {s.name: s for s in (
    StyleSpec("crimson", "palette", "each pixel's tone mapped onto a dark-red/crimson/pale-pink ramp", crimson,
              colour_histogram, "colour histogram (L1 distance of the 64-bin RGB histograms)"),
    StyleSpec("stripes", "texture", f"dark horizontal stripes, period {STRIPE_PERIOD} px (every other row)", stripes,
              stripe_energy, "stripe energy (share of AC power at the stripes' frequency)", stripe_energy_pooled),
    StyleSpec("blur", "focus", f"Gaussian blur, sigma {BLUR_SIGMA} px", blur, high_frequency_energy,
              "high-frequency energy (share of AC power above 1/4 cycle per pixel)", high_frequency_energy_pooled),
)}


def set_statistic(spec: StyleSpec, images: np.ndarray, *, pooled: bool = False) -> np.ndarray:
    """The style's statistic of a set of images: the per-image mean, or (pooled) over the set's pooled power."""
    return (spec.pooled_statistic if pooled and spec.pooled_statistic else spec.statistic)(images)


def style_distance(spec: StyleSpec, images: np.ndarray, reference: np.ndarray, *, pooled: bool = False) -> float:
    """L1 distance between the images' statistic and a reference statistic taken the same way."""
    return float(np.abs(set_statistic(spec, images, pooled=pooled) - reference).sum())


def style_set(spec: StyleSpec, count: int, seed: int, size: int = scene_data.SCENE_SIZE
              ) -> tuple[np.ndarray, list[str]]:
    """`count` restyled scenes (uint8 [N, size, size, 3]) and their captions."""
    items = scene_data.scenes(count, seed)
    rng = np.random.default_rng([seed, 99])
    images = np.stack([spec.transform(scene_data.render_scene(s, size), rng) for s in items])
    return images, [s.caption for s in items]


def write_style_set(spec: StyleSpec, folder: str | Path, count: int, seed: int,
                    size: int = scene_data.SCENE_SIZE) -> Path:
    """The style set as NNN.png + NNN.txt (its caption) in `folder`, for `restune train style`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, captions = style_set(spec, count, seed, size)
    for i, (img, caption) in enumerate(zip(images, captions)):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder
