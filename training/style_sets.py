"""The demo's style sets: procedural scenes (`training.scenes`) restyled in code, and how to measure a style.

Three styles that change an image in three different ways:

| style | what it does | statistic (`style_statistic`) |
|---|---|---|
| `crimson` | a colour palette: every pixel's tone mapped onto a dark-red → crimson → pale-pink ramp | joint RGB histogram (4 bins per channel, soft) |
| `stripes` | a texture: horizontal stripes, 2 px dark and 2 px light (period 4 px) | share of the grey images' AC power at the stripes' frequency |
| `blur` | a soft focus: Gaussian blur, σ = 1.2 px | share of the grey images' AC power above ¼ cycle per pixel |

A style set is scenes drawn from a seed of their own, each saved as `NNN.png` with its scene caption in `NNN.txt`,
so `restune train style --prompt-template '{caption}'` teaches the tuner the style alone, not the content.

Style strength (the demo's benchmark): the distance between the mean statistic of generated images and that of
the style set (L1 over the histogram bins; absolute difference of the scalars), for styled images against the
same distance for base images from the same prompts and seeds: `1 − d(styled) / d(base)` is the share of the
gap the style closed. The power shares are taken over the power of all of a set's images pooled, so that a nearly
flat image cannot dominate them. Each statistic has a second view (`StyleSpec.second`), the way it was first
measured, reported beside it: the power shares as a mean of each image's share, the histogram with hard bins.
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


STRIPE_PERIOD = 4
STRIPE_DARKEN = 0.5  # a stripe keeps this share of the brightness


def stripes(img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Horizontal stripes: rows 2 and 3 of every 4 darkened, always at that phase.

    Why 4 px and not 2 (every other row, the second version): a 2-px stripe lies inside the 2×2 patch that
    `tiny-trained` folds into one latent pixel, and that model's frozen output layers, trained on flat scenes,
    cannot draw such fine contrast. Measured by `restune bench styles` (96 prompts): the closest images the frozen
    head could output closed 17.9 % of the 2-px stripes' gap (45.2 % as a mean of per-image shares), 94.8 % of
    the 4-px stripes' (99.5 %); the tuners closed 14.8 % (35.3 %) and 91.6 % (94.4 %). A 4-px stripe is a change
    from one latent row to the next, which the head can draw.

    Why a fixed phase (the first version, diagonal 4-px stripes at a random phase, moved the statistic by 0 %):
    trained to predict the clean image, a denoiser that cannot tell the phase learns the mean over phases, an
    even darkening. At one fixed phase the tuner learns where the rows are (presumably from the U-Net's zero
    padding): in the benchmark's grid, all four prompts have their light rows at the set's phase.
    """
    out = img.astype(np.float32)
    dark = np.arange(img.shape[0]) % STRIPE_PERIOD >= STRIPE_PERIOD // 2
    out[dark] *= STRIPE_DARKEN
    return out.round().clip(0, 255).astype(np.uint8)


BLUR_SIGMA = 1.2


def blur(img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(BLUR_SIGMA)))


# -- statistics ----------------------------------------------------------------------------------------------

HIST_BINS = 4


def colour_histogram(images: np.ndarray) -> np.ndarray:
    """Mean joint RGB histogram of uint8 images [N, H, W, 3] (HIST_BINS per channel, sums to 1), soft: each
    channel's value is shared between the two nearest bin centres (32, 96, 160, 224), linearly.

    Why soft: with hard bins a colour counts wholly in one bin, so two colours a person cannot tell apart can
    count as different. Crimson's own mid colour (205, 22, 58) lies 13 and 6 levels from two bin edges (192 in red,
    64 in blue). Measured on 48 generated base images: crimson's transform applied to them in code closed 74.6 %
    of the hard histogram's gap, 90.5 % of the soft one's; the frozen head's closest images (where the set
    has (205, 22, 58) they have a median of (184, 46, 64): a little less saturated) closed 50.1 % and 85.1 %.
    """
    x = images[..., :3].astype(np.float64) * (HIST_BINS / 256.0) - 0.5  # in bin-centre units
    low = np.clip(np.floor(x), 0, HIST_BINS - 1).astype(np.int64)
    up_weight = np.clip(x - low, 0.0, 1.0)  # 0 at or below the lowest centre, at or above the highest
    high = np.minimum(low + 1, HIST_BINS - 1)
    n = images.shape[0]
    counts = np.zeros((n, HIST_BINS ** 3))
    rows = np.broadcast_to(np.arange(n)[:, None, None], x.shape[:3])
    for corner in range(8):  # the 2 × 2 × 2 nearest bin centres of each pixel
        code, weight = np.zeros(x.shape[:3], np.int64), np.ones(x.shape[:3])
        for ch in range(3):
            up = (corner >> ch) & 1
            code = code * HIST_BINS + (high[..., ch] if up else low[..., ch])
            weight = weight * (up_weight[..., ch] if up else 1.0 - up_weight[..., ch])
        np.add.at(counts, (rows, code), weight)
    return (counts / counts.sum(1, keepdims=True)).mean(0)


def colour_histogram_hard(images: np.ndarray) -> np.ndarray:
    """The same histogram with hard bins: each channel's value counts wholly in its bin of 64 levels."""
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
    """The set's share of AC power at the stripes' frequency, over the power of all its images pooled, as [1]."""
    return _pooled_share(images, _stripe_mask(*images.shape[1:3]))


def high_frequency_energy(images: np.ndarray) -> np.ndarray:
    """The set's share of AC power above ¼ cycle per pixel, over the power of all its images pooled, as [1]:
    sharp edges have much, a blur little."""
    return _pooled_share(images, _high_frequency_mask(*images.shape[1:3]))


# The same shares as a mean of each image's own share: the first measure, reported beside the pooled one. It lets
# an almost flat image, whose small AC power is mostly fine grain, count as much as a whole scene. Measured on 48
# generated images styled by a blur tuner: the 8 images with the highest shares (0.11-0.20) had AC power of
# 155-331, a spread of 3-5 grey levels, where the median image had 8,934 (24 levels). Two blur tuners of 2,400
# steps on 192 images (one trained alone, one after the other two styles) closed 30.0 % and 53.1 % of the
# per-image gap, 81.2 % and 78.1 % of the pooled one.
def stripe_energy_per_image(images: np.ndarray) -> np.ndarray:
    return np.array([_share(_power(images), _stripe_mask(*images.shape[1:3])).mean()])


def high_frequency_energy_per_image(images: np.ndarray) -> np.ndarray:
    return np.array([_share(_power(images), _high_frequency_mask(*images.shape[1:3])).mean()])


@dataclass(frozen=True)
class SecondView:
    """Another way to take a style's statistic, reported beside the one its target is measured on."""

    key: str  # its name in bench results: "per_image", "hard_bins"
    label: str  # what it is, for reports
    statistic: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class StyleSpec:
    name: str
    kind: str  # what changes: palette, texture, focus
    description: str
    transform: Callable[[np.ndarray, np.random.Generator | None], np.ndarray]
    statistic: Callable[[np.ndarray], np.ndarray]
    statistic_name: str
    second: SecondView


PER_IMAGE = "the mean of each image's own power share"


STYLES: dict[str, StyleSpec] = {s.name: s for s in (
    StyleSpec("crimson", "palette", "each pixel's tone mapped onto a dark-red/crimson/pale-pink ramp", crimson,
              colour_histogram, "colour histogram (L1 distance of the 64-bin RGB histograms, soft bins)",
              SecondView("hard_bins", "the colour histogram with hard bins", colour_histogram_hard)),
    StyleSpec("stripes", "texture", f"dark horizontal stripes, period {STRIPE_PERIOD} px ({STRIPE_PERIOD // 2} rows dark, "
              f"{STRIPE_PERIOD // 2} light)", stripes,
              stripe_energy, "stripe energy (the set's share of AC power at the stripes' frequency)",
              SecondView("per_image", PER_IMAGE, stripe_energy_per_image)),
    StyleSpec("blur", "focus", f"Gaussian blur, sigma {BLUR_SIGMA} px", blur, high_frequency_energy,
              "high-frequency energy (the set's share of AC power above 1/4 cycle per pixel)",
              SecondView("per_image", PER_IMAGE, high_frequency_energy_per_image)),
)}


def set_statistic(spec: StyleSpec, images: np.ndarray, *, second: bool = False) -> np.ndarray:
    """The style's statistic of a set of images, or (second) its second view."""
    return (spec.second.statistic if second else spec.statistic)(images)


def style_distance(spec: StyleSpec, images: np.ndarray, reference: np.ndarray, *, second: bool = False) -> float:
    """L1 distance between the images' statistic and a reference statistic taken the same way."""
    return float(np.abs(set_statistic(spec, images, second=second) - reference).sum())


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
