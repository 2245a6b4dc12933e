"""Style training inputs: image folders (unreadable files counted, empty folder refused) and config checks."""
from __future__ import annotations

import pytest
import torch

from restuning.errors import ConfigError, InputError
from training.style import ImageFolderError, StyleTrainConfig, load_image_folder, train_style


def test_image_folder_counts_unreadable_files_and_center_crops(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "wide.png")
    sub = tmp_path / "more"
    sub.mkdir()
    Image.new("L", (16, 16), 128).save(sub / "grey.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / ".hidden.png").write_bytes(b"skipped: hidden")
    images = load_image_folder(tmp_path, 8)
    assert images.pixels.shape == (2, 3, 8, 8) and images.pixels.dtype == torch.uint8
    assert images.files == ["more/grey.jpg", "wide.png"]
    assert sorted(images.unreadable) == ["broken.png", "readme.txt"]
    assert "2 files could not be read as images and were skipped" in images.report()
    assert images.pixels[1, 0].min() > 200 and images.pixels[1, 1].max() < 50  # the red one, cropped to 8×8


def test_folder_errors(tmp_path):
    with pytest.raises(ImageFolderError, match="does not exist"):
        load_image_folder(tmp_path / "missing", 8)
    with pytest.raises(ImageFolderError, match="is empty"):
        load_image_folder(tmp_path, 8)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ImageFolderError, match="no readable image .* all 1 files failed"):
        load_image_folder(tmp_path, 8)
    assert issubclass(ImageFolderError, InputError)


def test_empty_folder_fails_before_the_model_loads(tmp_path):
    with pytest.raises(ImageFolderError, match="is empty"):
        train_style(StyleTrainConfig(images=str(tmp_path), style="ink", diffusion_model="/nonexistent"))


def test_config_problems_are_listed_together(tmp_path):
    config = StyleTrainConfig(images=str(tmp_path), style="Base Style", prompt_template="{nope}", steps=0,
                              batch_size=0, lr=-1.0, dtype="int8", caption_dropout=1.0)
    with pytest.raises(ConfigError) as info:
        train_style(config)
    text = str(info.value)
    for needle in ("--style: name 'Base Style' is not allowed", "--prompt-template '{nope}'",
                   "--batch-size must be a positive integer", "--steps must be a positive integer",
                   "--lr must be a positive number", "--dtype 'int8' is not supported",
                   "--caption-dropout must be in [0, 1), got 1.0"):
        assert needle in text
    with pytest.raises(ConfigError, match="'base' is reserved"):
        train_style(StyleTrainConfig(images=str(tmp_path), style="base"))


def test_resolution_must_fit_the_latent_grid(tiny_pipe, style_folder):
    with pytest.raises(ConfigError, match="--resolution 40 is not a multiple of 32"):
        train_style(StyleTrainConfig(images=str(style_folder), style="ink", resolution=40), tiny_pipe)


def _contexts_seen(pipe, monkeypatch, config):
    """The text context of every image the U-Net was trained on."""
    seen = []
    predict = pipe.predict_noise

    def recording(noisy, timesteps, context, bypass):
        if torch.is_grad_enabled():  # a training step, not the fixed-noise eval loss before and after
            seen.extend(context.detach().clone())
        return predict(noisy, timesteps, context, bypass)

    monkeypatch.setattr(pipe, "predict_noise", recording)
    train_style(config, pipe, progress=False)
    monkeypatch.undo()
    return seen


def test_caption_dropout_trains_that_share_on_the_empty_prompt(tiny_pipe, style_folder, monkeypatch):
    config = dict(images=str(style_folder), style="ink", steps=12, batch_size=4, resolution=32, seed=0, device="cpu")
    empty = tiny_pipe.encode_prompts([""])[0]
    caption = tiny_pipe.encode_prompts(["a photo in ink style"])[0]
    kept_rows = _contexts_seen(tiny_pipe, monkeypatch, StyleTrainConfig(**config))
    half_rows = _contexts_seen(tiny_pipe, monkeypatch, StyleTrainConfig(**config, caption_dropout=0.5))
    assert len(kept_rows) == len(half_rows) == 48
    assert all(torch.equal(row, caption) for row in kept_rows)  # off by default
    dropped = sum(torch.equal(row, empty) for row in half_rows)
    assert dropped + sum(torch.equal(row, caption) for row in half_rows) == 48
    assert 12 <= dropped <= 36  # Binomial(48, 0.5): outside this range with probability < 0.1 %; seeded anyway
