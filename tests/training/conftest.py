"""Fixtures for training tests: a tiny image folder and CSV of real PNG files, and quick settings."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

MICRO = "restune_vit_micro"


def write_png(path, seed: int, size: int = 20, tint: int = 0) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, size=(size, size, 3), dtype=np.uint8)
    pixels[..., tint % 3] += 100  # each class leans towards one colour channel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")


def png_bytes(seed: int = 0, size: int = 20) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def image_folder(tmp_path):
    """root/{cat,dog,fox}/*.png: 3 classes x 8 images, plus one non-image file that must be ignored."""
    root = tmp_path / "pets"
    for c, name in enumerate(["cat", "dog", "fox"]):
        for i in range(8):
            write_png(root / name / f"{i}.png", seed=100 * c + i, tint=c)
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def csv_data(tmp_path):
    """data.csv (path,label) with relative paths, one broken image and one missing file."""
    root = tmp_path / "csvdata"
    rows = ["path,label"]
    for i in range(12):
        label = ["red", "green"][i % 2]
        write_png(root / "img" / f"{i}.png", seed=i, tint=i % 2)
        rows.append(f"img/{i}.png,{label}")
    (root / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    rows.append("img/broken.png,red")
    rows.append("img/missing.png,green")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


@pytest.fixture
def quick_settings():
    """TrainSettings for tiny CPU runs."""
    from training.trainer import TrainSettings

    def make(**overrides):
        values = dict(epochs=1, batch_size=8, device="cpu", progress=False, log_epochs=False)
        values.update(overrides)
        return TrainSettings(**values)

    return make
