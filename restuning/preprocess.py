"""Images in, normalised tensors out: the one preprocessing path shared by training and serving.

A tuner trained on tensors from `ImagePreprocessor` sees the same pixels at
serving time, so training and inference can never disagree on resize or
normalisation.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from restuning.backbones.base import BackboneInfo
from restuning.errors import InputError

DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: well above any photo, far below a decompression bomb
# Only common raster formats: Pillow's rarer parsers (DDS, EPS via Ghostscript, …) stay unreachable from input.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def load_image(source: bytes | str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decode a PNG, JPEG, WebP, GIF, BMP or TIFF image into RGB, refusing other formats, bombs and garbage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
            with stream:
                image = Image.open(stream, formats=ALLOWED_FORMATS)
                width, height = image.size
                if width * height > max_pixels:
                    raise InputError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
                if width < 1 or height < 1:
                    raise InputError(f"image has an empty size {width}x{height}")
                image.load()
                return image.convert("RGB")
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"not a decodable image: {type(exc).__name__}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"could not decode the image: {exc}") from None


class ImagePreprocessor:
    """RGB PIL image or uint8 array [H, W, 3] -> float tensor [3, H', W'] for one backbone.

    Two halves, so a server can decode and resize per request (`to_uint8`) and
    normalise a whole batch at once on the model's thread and device
    (`normalize`): per-image float maths on a second thread competes with the
    backbone's intra-op threads. Calling the object runs both halves and gives
    the same numbers bit for bit.
    """

    def __init__(self, info: BackboneInfo):
        self.size = info.image_size
        self.mean = torch.tensor(info.mean).view(3, 1, 1)
        self.std = torch.tensor(info.std).view(3, 1, 1)
        self._stats_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # (mean, std) per device

    def to_uint8(self, image) -> torch.Tensor:
        """RGB image -> resized uint8 pixels [3, H', W']."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise InputError(f"expected a uint8 image array [H, W] or [H, W, 3], got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        image = image.convert("RGB")
        h, w = self.size
        if image.size != (w, h):
            image = image.resize((w, h), Image.BICUBIC)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [..., 3, H, W] (any device) -> normalised float32 [..., 3, H, W] on the same device."""
        if pixels.dtype != torch.uint8:
            raise InputError(f"normalize expects uint8 pixels, got {pixels.dtype}")
        stats = self._stats_on.get(pixels.device)
        if stats is None:  # copied once per device, not once per batch (a host-to-GPU copy on the hot path)
            stats = self._stats_on[pixels.device] = (self.mean.to(pixels.device), self.std.to(pixels.device))
        mean, std = stats
        # in place on the fresh float copy: the same operations and rounding as `(p / 255 - mean) / std`,
        # a quarter of the time (no temporaries)
        return pixels.float().div_(255.0).sub_(mean).div_(std)

    def __call__(self, image) -> torch.Tensor:
        return self.normalize(self.to_uint8(image))
