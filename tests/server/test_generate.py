"""POST /v1/generate in-process on the tiny-random diffusion model, with style tuners hot-loaded from the store."""
from __future__ import annotations

import asyncio
import base64
import io

import pytest
import torch
from PIL import Image

from tests.helpers import png_bytes, server_settings


@pytest.fixture(scope="module")
def style_artifacts():
    from bench.generate import random_tuner
    from restuning.diffusion.pipeline import StylePipeline
    from training.style import style_artifact

    pipe = StylePipeline.load("tiny-random", device="cpu")
    return {name: style_artifact(name, random_tuner(pipe, seed, 0.05), pipe, {"note": "random, untrained"})
            for seed, name in enumerate(["ink", "neon"], start=1)}, pipe


@pytest.fixture
def gen_store(store_url, style_artifacts):
    from tuner_store.urls import open_store

    with open_store(store_url) as store:
        for artifact in style_artifacts[0].values():
            store.put(artifact)
    return store_url


def _decode(png_b64: str) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))), dtype=np.float32).copy())


def test_generate_styles_in_one_pass(gen_store, run_app, style_artifacts):
    async def main():
        async with run_app(server_settings(gen_store, diffusion_model="tiny-random")) as app:
            assert set(app.state.registry.records("diffusion")) == {"ink", "neon"}
            body = {"prompts": ["a red boat", "a cat"], "styles": ["base", "ink", "neon"], "steps": 2, "seed": 7,
                    "height": 32, "width": 32}
            r = await app.client.post("/v1/generate", json=body)
            assert r.status_code == 200, r.text
            data = r.json()
            pairs = [(im["prompt"], im["style"], im["seed"]) for im in data["images"]]
            assert pairs == [(p, s, seed) for p, seed in (("a red boat", 7), ("a cat", 8)) for s in body["styles"]]
            assert data["timings_ms"]["unet_batch"] == 12  # 6 pairs x CFG branches in every U-Net forward
            base, ink = _decode(data["images"][0]["png_base64"]), _decode(data["images"][1]["png_base64"])
            assert (base - ink).abs().mean() > 0.5  # the style tuner changes the image

            # the same (prompt, style, seed) alone equals the one from the mixed batch
            alone = await app.client.post("/v1/generate", json={**body, "prompts": ["a red boat"], "styles": ["ink"]})
            assert alone.status_code == 200
            # one U-Net forward per denoising step, however many images the request holds
            assert alone.json()["timings_ms"]["unet_forwards"] == data["timings_ms"]["unet_forwards"]
            assert alone.json()["timings_ms"]["unet_batch"] == 2
            diff = (_decode(alone.json()["images"][0]["png_base64"]) - ink).abs().max()
            assert diff <= 1.0  # at most one level of 255 (float reassociation in batched GEMMs)

    asyncio.run(main())


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"prompts": ["x"], "styles": ["nope"], "steps": 2}, 404, "unknown style"),
        ({"prompts": ["x"], "styles": ["alpha"], "steps": 2}, 400, "classification tuner"),
        ({"prompts": [""], "styles": ["base"], "steps": 2}, 400, "empty"),
        ({"prompts": ["x"] * 40, "styles": ["base"], "steps": 2}, 400, "limit"),
        ({"prompts": ["x"], "styles": ["base"], "steps": 0}, 400, "steps"),
        ({"prompts": ["x"], "styles": ["base"], "steps": 2, "guidance_scale": 99}, 400, "guidance"),
        ({"prompts": ["x"], "styles": ["base"], "steps": 2, "height": 33}, 400, "height"),
        ({"prompts": [], "styles": ["base"]}, 422, "invalid request"),
    ],
)
def test_bad_generate_requests(gen_store, run_app, body, status, needle):
    async def main():
        async with run_app(server_settings(gen_store, diffusion_model="tiny-random")) as app:
            r = await app.client.post("/v1/generate", json=body)
            assert r.status_code == status, r.text
            assert needle in r.text
            # a style tuner sent to classify is refused too
            r = await app.client.post("/v1/classify", json={"image": base64.b64encode(png_bytes(0)).decode(),
                                                            "tasks": ["ink"]})
            assert r.status_code == 400 and "diffusion" in r.json()["error"]

    asyncio.run(main())


def test_generate_disabled_without_a_model(store_url, run_app):
    async def main():
        async with run_app(server_settings(store_url)) as app:
            r = await app.client.post("/v1/generate", json={"prompts": ["x"]})
            assert r.status_code == 404 and "--diffusion-model" in r.json()["error"]

    asyncio.run(main())
