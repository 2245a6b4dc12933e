"""`restune bench generate`: S styles × P prompts in one batched pass vs S sequential single-style runs.

Both candidates produce the same S × P images from the same seeds; they are timed in one process,
interleaved (`bench.common.interleaved_medians`), so machine drift hits both alike. The
result JSON goes to bench/results/, with a grid PNG of one prompt across `base` and every style.

Style tuners for the grid and the timing:
- `trained` (default for tiny-random and tiny-trained): each style is quick-trained here, through the real
  training path (`training.style.train_style`), on generated images of one colour and texture
  (e.g. red stripes). tiny-random's VAE has random weights, so its decoded images are not pictures
  and do not show the training colours; the grid shows that each style *changes* the output.
  With tiny-trained the prompts are scene captions (what it was trained to draw); `restune bench styles`
  measures how well its styles show.
- `random`: tuners with random, non-zero weights where the zero-init would put zeros (no
  training); the compute is identical, so timing is unaffected.
- `--store URL`: the store's diffusion tuners trained on this exact U-Net, first S by name.
"""
from __future__ import annotations

import math
import re
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from bench.common import device_slug, interleaved_medians, machine_info
from bench.results import BenchResult
from restuning.devices import resolve_device
from restuning.diffusion.loading import TINY_RANDOM, TINY_TRAINED
from restuning.diffusion.pipeline import BASE_STYLE, StylePipeline
from restuning.errors import ConfigError
from training.scenes import scenes
from training.style import StyleTrainConfig, train_style
from tuner_store.urls import open_store

COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
    "magenta": (210, 50, 200), "cyan": (40, 200, 210), "orange": (245, 140, 30), "purple": (120, 50, 170),
    "white": (240, 240, 240), "black": (20, 20, 20), "brown": (120, 75, 40), "pink": (245, 150, 190),
}
TEXTURES = ("stripes", "checks", "dots", "gradient", "plain")


@dataclass(frozen=True)
class StyleSpec:
    name: str
    colour: tuple[int, int, int]
    texture: str


def style_specs(count: int) -> list[StyleSpec]:
    names = list(COLOURS)
    specs = []
    for i in range(count):
        colour = names[i % len(names)]
        texture = TEXTURES[(i + i // len(names)) % len(TEXTURES)]
        specs.append(StyleSpec(f"{colour}-{texture}", COLOURS[colour], texture))
    return specs


def style_image(spec: StyleSpec, size: int, rng: torch.Generator):
    """One training image of a style: its colour in its texture, with a random phase so images vary."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    period = max(4, size // 8)
    phase = int(torch.randint(0, period, (1,), generator=rng))
    if spec.texture == "stripes":
        mask = ((x + phase) // (period // 2)) % 2 == 0
    elif spec.texture == "checks":
        mask = (((x + phase) // (period // 2)) + ((y + phase) // (period // 2))) % 2 == 0
    elif spec.texture == "dots":
        cx = (x + phase) % period - period / 2
        cy = (y + phase) % period - period / 2
        mask = cx * cx + cy * cy < (period / 3) ** 2
    elif spec.texture == "gradient":
        mask = None
    else:
        mask = torch.ones(size, size, dtype=torch.bool)
    colour = torch.tensor(spec.colour, dtype=torch.float32).view(3, 1, 1)
    if mask is None:
        ramp = ((x + phase) % size).float() / size
        img = colour * (0.35 + 0.65 * ramp)
    else:
        background = 255 - colour * 0.5
        img = torch.where(mask, colour, background)
    img = (img + torch.randn(img.shape, generator=rng) * 6).clamp(0, 255).to(torch.uint8)
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def write_style_images(spec: StyleSpec, folder: Path, count: int, size: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator().manual_seed(seed)
    for i in range(count):
        style_image(spec, size, rng).save(folder / f"{spec.name}-{i:03d}.png")
    return folder


QUICK_LR = 1e-3


def quick_trained_tuners(pipeline, specs: list[StyleSpec], *, steps: int, batch_size: int = 4, images: int = 8,
                         resolution: int | None = None, seed: int = 0, lr: float = QUICK_LR,
                         progress: bool = True) -> tuple[dict, dict]:
    """Train one tuner per spec on generated images; returns ({name: tuner}, {name: metrics}).

    lr defaults to 1e-3, ten times Table 11's, so that a few dozen steps visibly move the output.
    """
    resolution = resolution or pipeline.default_size
    tuners, metrics = {}, {}
    with tempfile.TemporaryDirectory(prefix="restune-styles-") as tmp:
        for i, spec in enumerate(tqdm(specs, desc="quick-training styles", disable=not progress)):
            folder = write_style_images(spec, Path(tmp) / spec.name, images, resolution, seed + i)
            config = StyleTrainConfig(images=str(folder), style=spec.name, steps=steps, batch_size=batch_size,
                                      resolution=resolution, seed=seed + i, lr=lr, device=str(pipeline.device))
            result = train_style(config, pipeline, progress=False)
            tuners[spec.name] = result.tuner.to(pipeline.device, pipeline.dtype).eval()
            metrics[spec.name] = {k: result.metrics[k] for k in ("steps", "lr", "eval_loss_base", "eval_loss_trained")}
    return tuners, metrics


def random_tuner(pipeline, seed: int, scale: float = 0.02):
    """A tuner whose zero-initialised weights are random instead (changes the output; not trained)."""
    tuner = pipeline.new_tuner(seed=seed)
    gen = torch.Generator().manual_seed(seed + 10_000)
    with torch.no_grad():
        for p in tuner.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return tuner.to(pipeline.device, pipeline.dtype).eval()


def store_tuners(pipeline, url: str, count: int) -> dict:
    """The first `count` diffusion tuners (by name) in a store that were trained on this U-Net."""
    with open_store(url) as store:
        records = [r for r in store.latest().values()
                   if r.kind == "diffusion" and r.backbone_fingerprint == pipeline.fingerprint]
        records.sort(key=lambda r: r.name)
        if len(records) < count:
            raise ConfigError(f"the store {url} has {len(records)} diffusion tuners for U-Net {pipeline.name!r} "
                              f"({pipeline.fingerprint[:12]}…), fewer than --styles {count}")
        return {r.name: pipeline.tuner_from_artifact(store.get(r.name, r.version)) for r in records[:count]}


def image_grid(images, labels: list[str], caption: str | None = None, *, diff_gain: float | None = 4.0):
    """A grid of equally sized PIL images: a wrapped caption, the images with a label under each, and
    (diff_gain set) a second row with |image − images[0]| × diff_gain, i.e. what each style changed
    relative to the first image (base).

    Images under 128 px are enlarged with nearest-neighbour sampling (every pixel stays visible).
    """
    w, h = images[0].size
    scale = max(1, 128 // max(w, h))
    w, h = w * scale, h * scale
    cell_w = max(w, 72) + 4
    chars = max(20, cell_w * len(images) // 6)
    lines = textwrap.wrap(caption, chars) if caption else []
    cap_h = 12 * len(lines) + (4 if lines else 0)
    label_h = 14
    rows = [list(images)]
    if diff_gain:
        ref = np.asarray(images[0], dtype=np.float32)
        rows.append([Image.fromarray(np.clip(np.abs(np.asarray(img, dtype=np.float32) - ref) * diff_gain, 0, 255)
                                     .astype(np.uint8)) for img in images])
    grid = Image.new("RGB", (cell_w * len(images), cap_h + len(rows) * (h + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, line in enumerate(lines):
        draw.text((2, 2 + 12 * i), line, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        top = cap_h + r * (h + label_h)
        for i, (img, label) in enumerate(zip(row, labels)):
            grid.paste(img.resize((w, h), Image.NEAREST), (i * cell_w + (cell_w - w) // 2, top))
            text = label if r == 0 else (f"|x - {labels[0]}| x{diff_gain:g}" if i else "(reference)")
            draw.text((i * cell_w + 2, top + h + 1), text[: cell_w // 6], fill=(0, 0, 0))
    return grid


# What tiny-trained knows how to draw: captions of procedural scenes (training.scenes), from a seed no training uses.
SCENE_PROMPTS = tuple(s.caption for s in scenes(10, 950))
PROMPTS = ("a lighthouse on a cliff at dusk", "a bowl of fruit on a wooden table", "a city street in the rain",
           "a mountain lake with pine trees", "a portrait of an old sailor", "a red bicycle by a wall",
           "a cat sleeping on a sofa", "a sailing boat on the sea", "a snowy village at night",
           "a field of sunflowers")


def run_generate_bench(
    *,
    model: str = "tiny-random",
    styles: int = 10,
    prompts: int = 2,
    steps: int | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    device: str = "auto",
    dtype: str | None = None,
    tuners: str | None = None,
    train_steps: int = 60,
    store: str | None = None,
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = None,
) -> tuple[dict, object]:
    """Run the benchmark; returns (JSON payload, grid PIL image)."""
    if threads:
        torch.set_num_threads(threads)

    problems = []
    if not 1 <= styles <= 15:
        problems.append(f"--styles must be in [1, 15] (the grid adds 'base'), got {styles}")
    if prompts < 1 or prompts > len(PROMPTS):
        problems.append(f"--prompts must be in [1, {len(PROMPTS)}], got {prompts}")
    if tuners not in (None, "trained", "random"):
        problems.append(f"--tuners must be 'trained' or 'random', got {tuners!r}")
    if repeats < 1 or warmup < 0:
        problems.append("--repeats must be >= 1 and --warmup >= 0")
    if problems:
        raise ConfigError(problems)
    pipeline = StylePipeline.load(model, device=device, dtype=dtype)
    is_random = model.startswith(TINY_RANDOM)
    is_tiny = is_random or model == TINY_TRAINED
    steps = steps or (10 if is_tiny else 50)
    tuner_source = "store" if store else (tuners or ("trained" if is_tiny else "random"))
    specs = style_specs(styles)
    train_metrics = None
    if store:
        style_tuners = store_tuners(pipeline, store, styles)
    elif tuner_source == "trained":
        style_tuners, train_metrics = quick_trained_tuners(pipeline, specs, steps=train_steps, seed=seed,
                                                           resolution=height or pipeline.default_size,
                                                           progress=progress)
    else:
        style_tuners = {spec.name: random_tuner(pipeline, seed + i) for i, spec in enumerate(specs)}
    names = list(style_tuners)
    prompt_list = list((SCENE_PROMPTS if model == TINY_TRAINED else PROMPTS)[:prompts])
    options = dict(steps=steps, guidance_scale=guidance_scale, seed=seed, height=height, width=width)

    def one_pass():
        return pipeline.generate(prompt_list, names, style_tuners, **options)

    def sequential():
        return [pipeline.generate(prompt_list, [name], style_tuners, **options) for name in names]

    # Same images both ways? (same seeds; batched kernels may differ in the last bits)
    together = one_pass()
    apart = sequential()

    diffs = []
    for i, name in enumerate(names):
        for p in range(prompts):
            a = np.asarray(together.images[p * len(names) + i].image, dtype=np.int16)
            b = np.asarray(apart[i].images[p].image, dtype=np.int16)
            diffs.append(int(np.abs(a - b).max()))
    medians = interleaved_medians({"one_pass": one_pass, "sequential": sequential}, repeats=repeats, warmup=warmup,
                                  device=pipeline.device)
    # The grid: prompt 0 across base and every style, from one pass.
    grid_result = pipeline.generate(prompt_list[:1], [BASE_STYLE, *names], style_tuners, **options)
    caption = {"trained": f"quick-trained {train_steps} steps (lr {QUICK_LR:g}) on generated colour/texture images",
               "random": "random non-zero tuners (not trained)",
               "store": f"tuners from {store}"}[tuner_source]
    if is_random:
        caption += "; tiny-random: random VAE, images are not pictures"
    grid = image_grid([g.image for g in grid_result.images], [g.style for g in grid_result.images],
                      caption=f"{prompt_list[0]!r}, seed {seed}: {caption}")
    info = machine_info(pipeline.device)
    info["diffusers"], info["transformers"] = diffusers.__version__, transformers.__version__
    ratio = medians["one_pass"] / medians["sequential"]
    payload = {
        "benchmark": "generate",
        **info,
        "model": pipeline.name,
        "unet_fingerprint": pipeline.fingerprint,
        "dtype": str(pipeline.dtype).removeprefix("torch."),
        "styles": styles,
        "prompts": prompts,
        "images": styles * prompts,
        "steps": steps,
        "unet_forwards_per_run": int(together.timings_ms["unet_forwards"]),
        "sampler": together.request.sampler,
        "guidance_scale": together.request.guidance_scale,
        "height": together.request.height,
        "width": together.request.width,
        "tuners": tuner_source,
        "tuner_note": caption,
        "style_names": names,
        "train_metrics": train_metrics,
        "repeats": repeats,
        "warmup": warmup,
        "median_ms": medians,
        "one_pass_over_sequential": ratio,
        "one_pass_unet_batch": int(together.timings_ms["unet_batch"]),
        "sequential_unet_batch": int(apart[0].timings_ms["unet_batch"]),
        "max_abs_pixel_diff_one_pass_vs_sequential": max(diffs),
        "target": {"tiny-random cpu": 0.8, "tiny-trained cpu": 0.8, "sd-v1.5 512 gpu, S=10": 0.5},
        "prompt_list": prompt_list,
    }
    if math.isfinite(ratio):
        payload["one_pass_over_sequential"] = round(ratio, 4)
    return payload, grid


def generate_result(payload: dict, grid, device: str) -> BenchResult:
    slug = f"{re.sub(r'[^a-z0-9]+', '-', payload['model'].lower()).strip('-')[:32]}-{device_slug(resolve_device(device))}"
    m = payload["median_ms"]
    report = "\n".join([
        f"{payload['device']}, {payload['model']}, {payload['styles']} styles x {payload['prompts']} prompts, "
        f"{payload['steps']} steps, {payload['height']}x{payload['width']}, tuners: {payload['tuners']}",
        f"one pass   {m['one_pass']:10.1f} ms  (U-Net batch {payload['one_pass_unet_batch']})",
        f"sequential {m['sequential']:10.1f} ms  ({payload['styles']} runs, U-Net batch "
        f"{payload['sequential_unet_batch']})",
        f"one pass / sequential = {payload['one_pass_over_sequential']:.3f}  "
        f"(max pixel diff between the two: {payload['max_abs_pixel_diff_one_pass_vs_sequential']})",
    ])
    grid_name = f"generate-grid-{slug}.png"
    payload["grid_png"] = grid_name  # beside the JSON file
    return BenchResult(f"generate-{slug}", payload, report, figures={grid_name: grid.save})
