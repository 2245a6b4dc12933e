"""Augmented views, deterministic per (seed, image, view).

Table 10 trains with RandomResizedCrop + RandomHorizontalFlip. Here the random draw for image i in
view v comes from its own generator seeded with (seed, i, v), never from a global RNG, so:
- a feature cache that extracted view v holds exactly the features an on-the-fly epoch using view v
  would compute (the cache-equality test checks it bit for bit);
- a resumed run sees the same augmentations as an uninterrupted one, with nothing to checkpoint;
- DataLoader workers, ranks and batch order cannot change what an image looks like.

Without a cache, epoch e uses view e (a fresh draw each epoch); with `--cache-views K`, epoch e uses
view e mod K. The crop is cut from the decoded image, then `ImagePreprocessor` resizes it to the
backbone's input size exactly as the server does with a whole image; validation and test use the
whole image (view None), which is what serving sees.

Policy (`choose_augmentation`): `on` crops/flips wherever every task's labels allow it, `off` never, and
`auto` (the default) does what `on` does unless the source images are low-resolution (median shorter
side under LOW_RES_SIDE pixels), where it uses none: a crop of an 8 or 32 px digit, blown up to the
backbone's 224 px input, loses strokes and blurs what is left, and `restune bench accuracy` measures what
that costs (docs/benchmarks.md). 128 px, about half a 224 px input, keeps the paper's crop + flip for
photographs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from restuning.preprocess import ImagePreprocessor
from training.data import ImageSet
from training.train_config import AUGMENT_MODES, LOW_RES_SIDE


@dataclass(frozen=True)
class Augmentation:
    crop: bool = True
    flip: bool = True
    scale: tuple[float, float] = (0.35, 1.0)  # area fraction of the crop (torchvision's default 0.08 is harsh on small images)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    seed: int = 0

    @property
    def enabled(self) -> bool:
        return self.crop or self.flip

    def to_json(self) -> dict:
        return {"crop": self.crop, "flip": self.flip, "scale": list(self.scale), "ratio": list(self.ratio),
                "seed": self.seed}

    def params(self, width: int, height: int, index: int, view: int) -> tuple[int, int, int, int, bool]:
        """(left, top, crop width, crop height, flip) for image `index` in `view` (torchvision's algorithm)."""
        rng = np.random.default_rng([self.seed, int(index), int(view), 0xA11])
        left, top, w, h = 0, 0, width, height
        if self.crop:
            area = width * height
            log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
            for _ in range(10):
                target = area * rng.uniform(self.scale[0], self.scale[1])
                aspect = math.exp(rng.uniform(*log_ratio))
                cw = int(round(math.sqrt(target * aspect)))
                ch = int(round(math.sqrt(target / aspect)))
                if 0 < cw <= width and 0 < ch <= height:
                    left = int(rng.integers(0, width - cw + 1))
                    top = int(rng.integers(0, height - ch + 1))
                    w, h = cw, ch
                    break
            else:  # fall back to a central crop clamped to the ratio range, as torchvision does
                in_ratio = width / height
                if in_ratio < self.ratio[0]:
                    w, h = width, int(round(width / self.ratio[0]))
                elif in_ratio > self.ratio[1]:
                    h, w = height, int(round(height * self.ratio[1]))
                left, top = (width - w) // 2, (height - h) // 2
        flip = bool(self.flip and rng.random() < 0.5)
        return left, top, w, h, flip

    def __call__(self, image, index: int, view: int):
        left, top, w, h, flip = self.params(image.width, image.height, index, view)
        if (left, top, w, h) != (0, 0, image.width, image.height):
            image = image.crop((left, top, left + w, top + h))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image


def choose_augmentation(mode: str, images: ImageSet, *, crop_scale: float, seed: int) -> tuple[Augmentation, str]:
    """The augmentation a run trains with, and a one-line reason for the log and the run's notes."""
    if mode not in AUGMENT_MODES:
        raise ValueError(f"unknown augmentation mode {mode!r}; choose one of {', '.join(AUGMENT_MODES)}")
    scale = (max(crop_scale, images.min_crop_scale), 1.0)
    none = Augmentation(crop=False, flip=False, scale=scale, seed=seed)
    if mode == "off":
        return none, "augmentation: off (--augment off / --no-augment)"
    if mode == "auto":
        side = images.source_side()
        if side < LOW_RES_SIDE:
            return none, (f"augmentation: none (auto: the training images are {side} px on the shorter side, "
                          f"under {LOW_RES_SIDE} px; --augment on forces crop/flip)")
    chosen = Augmentation(crop=images.crop_ok, flip=images.flip_ok, scale=scale, seed=seed)
    kept = [name for name, used in (("crop", chosen.crop), ("flip", chosen.flip)) if used]
    why = f"augmentation: {' + '.join(kept) if kept else 'none'} ({mode}"
    if len(kept) < 2:
        why += "; a " + " or a ".join(n for n in ("crop", "flip") if n not in kept) + " would change a task's labels"
    return chosen, why + ")"


class ViewDataset(torch.utils.data.Dataset):
    """Item i -> (pixels [3, H, W], i) for the current `view` (None: the whole image, no augmentation)."""

    def __init__(self, images: ImageSet, preprocess: ImagePreprocessor, augmentation: Augmentation | None):
        self.images = images
        self.preprocess = preprocess
        self.augmentation = augmentation if augmentation is not None and augmentation.enabled else None
        self.view: int | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images.load(index)
        if self.view is not None and self.augmentation is not None:
            image = self.augmentation(image, index, self.view)
        return self.preprocess(image), index
