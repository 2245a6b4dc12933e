"""`restune demo --diffusion`: three style tuners trained here, then one grid from one POST /v1/generate call.

The tuners (`training.style_demo`) are pushed to the store; the grid (prompts as rows, `base` and the styles as
columns) comes from the HTTP API: the server at `--server URL` (which must read the same store), or, without one,
the real server app run in this process with that store and the diffusion model, called through httpx's ASGI
transport (a real request through the API's validation, routing, registry and JSON, without a socket).
"""
from __future__ import annotations

import asyncio
import base64
import io
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

from clients.client import AsyncRestuneClient, RestuneClient
from restuning.diffusion.pipeline import BASE_STYLE, StylePipeline
from server.app import create_app
from server.settings import ServerSettings
from training.style_demo import train_demo_styles
from training.style_demo_config import DEMO_IMAGES, DEMO_PROMPTS, DEMO_STEPS, DEMO_STYLES
from tuner_store.urls import DEFAULT_STORE_URL

IN_PROCESS_URL = "http://restune.in-process"
# The in-process server's classification side is never called: the smallest in-code backbone keeps it cheap.
IN_PROCESS_BACKBONE = ("restune_vit_micro", "random:0")
GRID_STEPS = 25
GRID_GUIDANCE = None  # the model's default (tiny-trained: 1.5; SD: 3.0)


def in_process_settings(store: str, model: str, device: str = "cpu") -> ServerSettings:
    return ServerSettings(backbone=IN_PROCESS_BACKBONE[0], weights=IN_PROCESS_BACKBONE[1], store=store,
                          diffusion_model=model, device=device, dtype="float32", feature_cache_mb=0)


async def _generate_in_process(settings: ServerSettings, prompts: list[str], styles: list[str], options: dict):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncRestuneClient(IN_PROCESS_URL, transport=transport, timeout=600.0) as client:
            return await client.generate(prompts, styles, **options)


def generate_via_api(prompts: list[str], styles: list[str], *, store: str, model: str, server: str | None = None,
                     device: str = "cpu", **options) -> dict:
    """One POST /v1/generate: to `server`, or to the server app run here on `store` and `model`."""
    if server:
        with RestuneClient(server, timeout=600.0) as client:
            return client.generate(prompts, styles, **options)
    return asyncio.run(_generate_in_process(in_process_settings(store, model, device), prompts, styles, options))


def decode_images(response: dict) -> list[tuple[str, str, Image.Image]]:
    """(prompt, style, image) of each image of a generate response, in its order."""
    return [(item["prompt"], item["style"], Image.open(io.BytesIO(base64.b64decode(item["png_base64"]))).convert("RGB"))
            for item in response["images"]]


def prompt_style_grid(images: list[tuple[str, str, Image.Image]], prompts: list[str], styles: list[str], *,
                      cell: int = 128, caption: str | None = None) -> Image.Image:
    """Prompts as rows, styles as columns; images enlarged with nearest-neighbour sampling (pixels stay visible)."""
    by_key = {(p, s): im for p, s, im in images}
    label_w, head_h, pad = 170, 16, 4
    cap_lines = textwrap.wrap(caption, (label_w + len(styles) * (cell + pad)) // 6) if caption else []
    cap_h = 12 * len(cap_lines) + (4 if cap_lines else 0)
    width = label_w + len(styles) * (cell + pad)
    height = cap_h + head_h + len(prompts) * (cell + pad)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, line in enumerate(cap_lines):
        draw.text((4, 2 + 12 * i), line, fill=(0, 0, 0))
    for c, style in enumerate(styles):
        draw.text((label_w + c * (cell + pad) + 4, cap_h + 2), style, fill=(0, 0, 0))
    for r, prompt in enumerate(prompts):
        top = cap_h + head_h + r * (cell + pad)
        for i, line in enumerate(textwrap.wrap(prompt, label_w // 6 - 1)[:8]):
            draw.text((4, top + 4 + 12 * i), line, fill=(0, 0, 0))
        for c, style in enumerate(styles):
            image = by_key.get((prompt, style))
            if image is not None:
                grid.paste(image.resize((cell, cell), Image.NEAREST), (label_w + c * (cell + pad), top))
    return grid


def run_style_demo(*, model: str = "tiny-trained", store: str | None = None, server: str | None = None,
                   grid_path: str | Path = "style-demo-grid.png", steps: int = DEMO_STEPS, images: int = DEMO_IMAGES,
                   seed: int = 0, device: str = "cpu", progress: bool = True) -> dict:
    """Train and push the demo's style tuners, then write the grid from one generate call; returns a summary."""
    store = store or DEFAULT_STORE_URL
    start = time.perf_counter()
    pipeline = StylePipeline.load(model, device=device, dtype="float32")
    styles = train_demo_styles(pipeline, steps=steps, images=images, seed=seed, store=store, progress=progress)
    trained_s = time.perf_counter() - start
    prompts, columns = list(DEMO_PROMPTS), [BASE_STYLE, *DEMO_STYLES]
    response = generate_via_api(prompts, columns, store=store, model=model, server=server, device=device,
                                steps=GRID_STEPS, guidance_scale=GRID_GUIDANCE, seed=seed)
    images = decode_images(response)
    guidance = pipeline.limits.default_guidance if GRID_GUIDANCE is None else GRID_GUIDANCE
    grid = prompt_style_grid(images, prompts, columns,
                             caption=f"{pipeline.name}: one POST /v1/generate, {len(prompts)} prompts x "
                                     f"{len(columns)} styles, {GRID_STEPS} {pipeline.sampler_label} steps, guidance "
                                     f"{guidance:g}, seed {seed} (prompt i: seed + i)")
    grid_path = Path(grid_path)
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(grid_path)
    return {
        "model": pipeline.name, "store": store, "server": server or "in-process", "grid": str(grid_path),
        "styles": {name: {"pushed": s.pushed, "steps": s.metrics["steps"], "train_seconds": s.metrics["train_seconds"],
                          "eval_loss_base": s.metrics["eval_loss_base"],
                          "eval_loss_trained": s.metrics["eval_loss_trained"]} for name, s in styles.items()},
        "train_seconds": round(trained_s, 1), "seconds": round(time.perf_counter() - start, 1),
        "generate_timings_ms": response.get("timings_ms", {}), "prompts": prompts, "columns": columns,
        "pixels_mean_abs_diff_to_base": _style_changes(images, prompts, columns),
    }


def _style_changes(images, prompts: list[str], columns: list[str]) -> dict[str, float]:
    """Mean |styled − base| per style over the grid's prompts, on the 0–255 scale."""
    by_key = {(p, s): np.asarray(im, dtype=np.float32) for p, s, im in images}
    return {s: round(float(np.mean([np.abs(by_key[(p, s)] - by_key[(p, columns[0])]).mean() for p in prompts])), 2)
            for s in columns[1:]}
