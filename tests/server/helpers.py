"""Helpers for server tests: tiny artifacts, images, settings, an in-process app."""
from __future__ import annotations

import asyncio
import io

import numpy as np
import torch
from PIL import Image

from restuning.bypass import BypassConfig, build_bypass

MICRO = "restune_vit_micro"


def make_artifact(backbone, name: str, num_classes: int = 3, seed: int = 0, **structure):
    from tuner_store.artifact import classification_artifact

    config = BypassConfig.create(backbone.info, num_classes=num_classes, dim=structure.pop("dim", 4), **structure)
    bypass = build_bypass(config, backbone.embed_dim, seed=seed)
    labels = [f"{name}-class{i}" for i in range(num_classes)]
    return classification_artifact(name, bypass, labels, backbone, {"note": "test"})


def png_bytes(seed: int = 0, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def server_settings(store_url: str, **overrides):
    from server.settings import ServerSettings

    values = dict(backbone=MICRO, weights="random:0", store=store_url, device="cpu", dtype="float32",
                  max_queue_delay_ms=20.0)
    values.update(overrides)
    return ServerSettings(**values)


class RunningApp:
    """The app with its lifespan running, and an in-process httpx client."""

    def __init__(self, app):
        import httpx

        self.app = app
        self.state = app.state.restune
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")

    async def wait_for(self, predicate, timeout: float = 5.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.02)


