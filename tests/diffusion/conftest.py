"""Fixtures for the diffusion tests: the tiny-random Stable Diffusion model, built once, in float32 on CPU."""
from __future__ import annotations

import contextlib

import pytest
import torch


@contextlib.contextmanager
def one_torch_thread():
    """One intra-op thread inside the block, then the previous setting again.

    The tiny U-Net's kernels are microseconds long; with two OpenMP threads on a CPU shared with
    other processes, spin-waiting at every barrier made a 20 ms forward take up to 4 s. One thread
    keeps these tests fast and steady on a busy machine and changes no result beyond float
    reassociation (every tolerance in these tests holds either way).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_pipe():
    from restuning.diffusion.pipeline import StylePipeline

    return StylePipeline.load("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def random_tuners(tiny_pipe):
    """Two style tuners whose zero-initialised weights are random (so each changes the output)."""
    from bench.generate import random_tuner

    return {"s1": random_tuner(tiny_pipe, 1, 0.05), "s2": random_tuner(tiny_pipe, 2, 0.05)}


@pytest.fixture(scope="session")
def style_folder(tmp_path_factory):
    """Eight 32×32 training images of one style (red stripes), plus one file that is not an image."""
    from bench.generate import style_specs, write_style_images

    folder = tmp_path_factory.mktemp("style-red")
    write_style_images(style_specs(1)[0], folder, 8, 32, seed=0)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="session")
def trained(tiny_pipe, style_folder):
    """A style tuner trained here: 30 steps, lr 1e-3 (10× Table 11's, so a few steps move the output)."""
    from training.style import StyleTrainConfig, train_style

    config = StyleTrainConfig(images=str(style_folder), style="red-stripes", steps=30, batch_size=4,
                              resolution=32, lr=1e-3, seed=0, device="cpu")
    with one_torch_thread():  # fixtures of wider scope are set up before the autouse one applies
        return train_style(config, tiny_pipe, progress=False)
