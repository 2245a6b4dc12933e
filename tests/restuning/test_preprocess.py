import io

import numpy as np
import pytest
import torch
from PIL import Image

from restuning.errors import InputError
from restuning.preprocess import ImagePreprocessor, load_image


def _encode(fmt: str, size=(20, 10)) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 128, dtype=np.uint8)).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_common_formats_decode(fmt):
    assert load_image(_encode(fmt)).size == (20, 10)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA"])
def test_other_formats_are_refused(fmt):
    with pytest.raises(InputError, match="not a decodable image"):
        load_image(_encode(fmt))


def test_pixel_limit():
    with pytest.raises(InputError, match="200 pixels; the limit is 100"):
        load_image(_encode("PNG"), max_pixels=100)


def test_garbage():
    with pytest.raises(InputError):
        load_image(b"\x89PNG\r\n\x1a\n not really")


def test_preprocessor_resizes_and_normalises(micro_backbone):
    pixels = ImagePreprocessor(micro_backbone.info)(load_image(_encode("PNG")))
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    assert torch.allclose(pixels, torch.full_like(pixels, (128 / 255 - 0.5) / 0.5), atol=1e-6)


def test_batched_normalize_matches_per_image(micro_backbone):
    """The server's split path (uint8 per request, one normalize per batch) gives the training path's numbers."""
    pre = ImagePreprocessor(micro_backbone.info)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(3)]
    raw = torch.stack([pre.to_uint8(im) for im in images])
    assert raw.dtype == torch.uint8 and raw.shape == (3, 3, 32, 32)
    assert torch.equal(pre.normalize(raw), torch.stack([pre(im) for im in images]))
    with pytest.raises(InputError, match="uint8"):
        pre.normalize(raw.float())
