"""`restune bench styles`: does the trained base model draw what it is asked, do the styles show, is content kept?

On `tiny-trained` (or any model trained by `restune train base-diffusion`), in one process:

1. A shape classifier (`training.scene_classifier`: a bypass tuner on the in-code `restune_vit_micro_avg`, random
   weights) is trained on drawn scenes; its accuracy on held-out drawn scenes, plain and in each style, is the
   ceiling of what follows.
2. The demo's three style tuners are trained (`training.style_demo`, the `restune train style` path).
3. Evaluation prompts: the captions of `--prompts` scenes from a seed no training used (each names its shape);
   every prompt is generated in `base` and in every style, from the same seed, in batched passes.
4. Quality bar: the classifier finds the prompted shape in the base images (chance: 1 / 3 shapes).
   Style strength: per style, the distance of the styled images' statistic to the style set's (a held-out set of
   the same style), against the same distance for the base images (`training.style_sets`).
   Content kept: the classifier finds the prompted shape in the styled images.
   Ceilings (`bench.style_ceilings`): the same figures for each style's transform applied to the base images, and
   for the closest images to those that the frozen U-Net head can output at all, whatever the bypass.
5. The grid: the demo's prompts × (base + styles) from one POST /v1/generate call to the server app run in this
   process (`bench.style_demo`), on a scratch store holding the tuners of step 2.

Writes `bench/results/styles-<model>-<device>.json` and `styles-grid-<model>-<device>.png`.
"""
from __future__ import annotations

import re
import tempfile
import time

import diffusers
import numpy as np
import torch
import transformers
from tqdm.auto import tqdm

from bench.common import device_slug, machine_info
from bench.results import BenchResult
from bench.style_ceilings import HEAD_CEILING_STEPS, head_ceiling_images, transform_images
from bench.style_demo import GRID_GUIDANCE, GRID_STEPS, decode_images, generate_via_api, prompt_style_grid
from restuning.devices import resolve_device
from restuning.diffusion.pipeline import BASE_STYLE, StylePipeline
from restuning.errors import ConfigError
from training import scenes as scene_data
from training import style_sets
from training.scene_classifier import train_shape_classifier
from training.style_demo import train_demo_styles
from training.style_demo_config import DEMO_IMAGES, DEMO_PROMPTS, DEMO_STEPS, DEMO_STYLES
from tuner_store.urls import open_store

EVAL_SEED = 900  # evaluation scenes: no training run draws from this seed
REFERENCE_SEED = 1100  # the style statistics' reference sets: held out from the style sets (1000, 1001, …)
REFERENCE_IMAGES = 256
TARGETS = {"base_shape_accuracy": 0.8, "style_distance_reduction": 0.5, "styled_shape_accuracy": 0.7}


def generate_all(pipeline, prompts: list[str], styles: list[str], tuners: dict, *, steps: int, guidance: float,
                 seeds: list[int], chunk: int, progress: bool) -> dict[str, np.ndarray]:
    """Every prompt in every style (uint8 [N, H, W, 3] per style), `chunk` prompts × all styles per pass."""
    out: dict[str, list] = {s: [] for s in styles}
    for start in tqdm(range(0, len(prompts), chunk), desc="generating", disable=not progress):
        result = pipeline.generate(prompts[start:start + chunk], styles, tuners, steps=steps,
                                   guidance_scale=guidance, seed=seeds[start:start + chunk])
        for image in result.images:
            out[image.style].append(np.asarray(image.image))
    return {s: np.stack(v) for s, v in out.items()}


def run_styles_bench(*, model: str = "tiny-trained", prompts: int = 96, steps: int = GRID_STEPS,
                     guidance_scale: float | None = GRID_GUIDANCE, style_steps: int = DEMO_STEPS,
                     style_images: int = DEMO_IMAGES, classifier_scenes: int = 6000, classifier_epochs: int = 40,
                     head_ceiling_steps: int = HEAD_CEILING_STEPS, seed: int = 0, device: str = "cpu",
                     threads: int | None = None, progress: bool = True) -> tuple[dict, object]:
    if threads:
        torch.set_num_threads(threads)
    if prompts < 1 or steps < 1 or classifier_scenes < 30 or head_ceiling_steps < 0:
        raise ConfigError(f"bench styles needs --prompts >= 1, --steps >= 1, --classifier-scenes >= 30 and "
                          f"--head-ceiling-steps >= 0, got {prompts}, {steps}, {classifier_scenes}, "
                          f"{head_ceiling_steps}")
    start = time.perf_counter()
    pipeline = StylePipeline.load(model, device=device, dtype="float32")
    if guidance_scale is None:
        guidance_scale = pipeline.limits.default_guidance
    classifier = train_shape_classifier(train_size=classifier_scenes, epochs=classifier_epochs, progress=progress)
    styles = train_demo_styles(pipeline, steps=style_steps, images=style_images, seed=seed, progress=progress)
    tuners = {name: s.tuner for name, s in styles.items()}

    items = scene_data.scenes(prompts, EVAL_SEED)
    captions, shapes = [s.caption for s in items], [s.shape for s in items]
    seeds = [seed + i for i in range(prompts)]
    columns = [BASE_STYLE, *styles]
    gen_start = time.perf_counter()
    images = generate_all(pipeline, captions, columns, tuners, steps=steps, guidance=guidance_scale, seeds=seeds,
                          chunk=max(1, pipeline.limits.max_images // len(columns)), progress=progress)
    generate_s = time.perf_counter() - gen_start
    base_accuracy = classifier.accuracy(images[BASE_STYLE], shapes)
    per_style = {}
    for i, name in enumerate(styles):
        spec = style_sets.STYLES[name]
        reference_images, _ = style_sets.style_set(spec, REFERENCE_IMAGES, REFERENCE_SEED + i, pipeline.default_size)
        reference = spec.statistic(reference_images)
        d_base = style_sets.style_distance(spec, images[BASE_STYLE], reference)
        d_style = style_sets.style_distance(spec, images[name], reference)
        per_style[name] = {
            "kind": spec.kind, "description": spec.description, "statistic": spec.statistic_name,
            "reference_statistic": [round(float(v), 6) for v in reference] if len(reference) <= 4 else None,
            "base_statistic": [round(float(v), 6) for v in spec.statistic(images[BASE_STYLE])]
            if len(reference) <= 4 else None,
            "styled_statistic": [round(float(v), 6) for v in spec.statistic(images[name])]
            if len(reference) <= 4 else None,
            "distance_base": round(d_base, 6), "distance_styled": round(d_style, 6),
            "distance_reduction": round(1 - d_style / d_base, 4) if d_base > 0 else None,
            "second_view": spec.second.key,
            **_second_figures(spec, reference_images, images[BASE_STYLE], images[name]),
            "shape_accuracy": round(classifier.accuracy(images[name], shapes), 4),
            "classifier_ceiling": round(classifier.metrics[f"test_accuracy_{name}"], 4),
            "ceilings": _ceilings(pipeline, spec, reference_images, images[BASE_STYLE], classifier, shapes,
                                  head_ceiling_steps, seed),
            "mean_abs_pixel_change": round(float(np.abs(images[name].astype(np.float32)
                                                         - images[BASE_STYLE].astype(np.float32)).mean()), 2),
            "training": {k: styles[name].metrics[k] for k in ("steps", "images", "batch_size", "lr", "train_seconds",
                                                               "eval_loss_base", "eval_loss_trained")},
        }

    # The grid: one POST /v1/generate to the server app, reading a scratch store that holds these tuners.
    with tempfile.TemporaryDirectory(prefix="restune-bench-styles-") as tmp:
        store_url = f"file://{tmp}/tuners"
        with open_store(store_url) as store:
            for s in styles.values():
                store.put(s.artifact)
        grid_columns = [BASE_STYLE, *DEMO_STYLES]
        response = generate_via_api(list(DEMO_PROMPTS), grid_columns, store=store_url, model=model, device=device,
                                    steps=steps, guidance_scale=guidance_scale, seed=seed)
    grid = prompt_style_grid(decode_images(response), list(DEMO_PROMPTS), grid_columns,
                             caption=f"{pipeline.name}: one POST /v1/generate, {steps} {pipeline.sampler_label} steps, "
                                     f"guidance {guidance_scale:g}, seed {seed} (prompt i: seed + i); styles trained "
                                     f"{style_steps} steps on {style_images} images each")
    chance = 1 / len(scene_data.SHAPES)
    info = machine_info(pipeline.device)
    info["diffusers"], info["transformers"] = diffusers.__version__, transformers.__version__
    payload = {
        "benchmark": "styles",
        **info,
        "model": pipeline.name,
        "unet_fingerprint": pipeline.fingerprint,
        "image_size": pipeline.default_size,
        "sampler": pipeline.limits.default_sampler, "steps": steps, "guidance_scale": guidance_scale, "seed": seed,
        "eval_prompts": prompts, "eval_scene_seed": EVAL_SEED, "reference_seed": REFERENCE_SEED,
        "reference_images": REFERENCE_IMAGES,
        "classifier": {**classifier.settings,
                       "seconds": round(classifier.seconds, 1),
                       "drawn_test_accuracy": round(classifier.metrics["test_accuracy"], 4),
                       **{f"drawn_test_accuracy_{n}": round(classifier.metrics[f"test_accuracy_{n}"], 4)
                          for n in style_sets.STYLES}},
        "chance": round(chance, 4),
        "base_shape_accuracy": round(base_accuracy, 4),
        "styles": per_style,
        "style_set": {"images": style_images, "steps": style_steps, "prompt_template": "{caption}", "flip": False},
        "generate_seconds": round(generate_s, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "grid_prompts": list(DEMO_PROMPTS),
        "grid_timings_ms": response.get("timings_ms", {}),
        "targets": TARGETS,
        "meets_targets": {
            "base_shape_accuracy": base_accuracy >= TARGETS["base_shape_accuracy"],
            **{f"{n}_distance_reduction": (r["distance_reduction"] or 0) >= TARGETS["style_distance_reduction"]
               for n, r in per_style.items()},
            **{f"{n}_shape_accuracy": r["shape_accuracy"] >= TARGETS["styled_shape_accuracy"]
               for n, r in per_style.items()},
        },
    }
    return payload, grid


def _second_figures(spec, reference_images: np.ndarray, base: np.ndarray, styled: np.ndarray) -> dict:
    """The style's second view of its statistic (`training.style_sets.SecondView`), under the view's key."""
    reference = style_sets.set_statistic(spec, reference_images, second=True)
    d_base = style_sets.style_distance(spec, base, reference, second=True)
    d_style = style_sets.style_distance(spec, styled, reference, second=True)

    def scalar(values: np.ndarray):  # a histogram's 64 bins are not worth a line of JSON each
        return round(float(values[0]), 6) if len(values) == 1 else None

    return {spec.second.key: {"label": spec.second.label, "reference_statistic": scalar(reference),
                              "base_statistic": scalar(spec.second.statistic(base)),
                              "styled_statistic": scalar(spec.second.statistic(styled)),
                              "distance_base": round(d_base, 6), "distance_styled": round(d_style, 6),
                              "distance_reduction": round(1 - d_style / d_base, 4) if d_base > 0 else None}}


def _ceilings(pipeline, spec, reference_images: np.ndarray, base: np.ndarray, classifier, shapes: list[str],
              head_steps: int, seed: int) -> dict:
    """The style's figures for its transform of the base images, and for the frozen head's closest images."""
    reference = spec.statistic(reference_images)
    d_base = style_sets.style_distance(spec, base, reference)

    def figures(images: np.ndarray) -> dict:
        out = {"distance_reduction": round(1 - style_sets.style_distance(spec, images, reference) / d_base, 4)
               if d_base > 0 else None}
        second = _second_figures(spec, reference_images, base, images)[spec.second.key]
        out[f"{spec.second.key}_distance_reduction"] = second["distance_reduction"]
        out["shape_accuracy"] = round(classifier.accuracy(images, shapes), 4)
        return out

    targets = transform_images(spec, base)
    head = None
    if head_steps and pipeline.prediction_type == "sample":
        images, loss = head_ceiling_images(pipeline, targets, steps=head_steps, seed=seed)
        head = {**figures(images), "mse": round(loss, 6), "steps": head_steps}
    return {"transform": figures(targets), "head": head}


def format_styles(payload: dict) -> str:
    c = payload["classifier"]
    lines = [
        f"{payload['device']}, {payload['model']} ({payload['image_size']}x{payload['image_size']}), "
        f"{payload['eval_prompts']} prompts, {payload['steps']} steps, guidance {payload['guidance_scale']:g}",
        f"shape classifier ({c['backbone']}, {c['weights']}): drawn scenes {c['drawn_test_accuracy']:.3f}",
        f"base images: prompted shape found in {payload['base_shape_accuracy']:.1%} (target >= "
        f"{payload['targets']['base_shape_accuracy']:.0%}; chance {payload['chance']:.1%})",
        f"{'style':<8} {'d(base)':>9} {'d(style)':>9} {'reduction':>9} {'shape acc':>9} {'drawn':>8} {'|change|':>8}",
    ]
    for name, r in payload["styles"].items():
        red = f"{r['distance_reduction']:.1%}" if r["distance_reduction"] is not None else "-"
        lines.append(f"{name:<8} {r['distance_base']:9.4f} {r['distance_styled']:9.4f} {red:>9} "
                     f"{r['shape_accuracy']:9.1%} {r['classifier_ceiling']:8.1%} {r['mean_abs_pixel_change']:8.1f}")
    for n, r in payload["styles"].items():
        second = r[r["second_view"]]
        v = second["distance_reduction"]
        lines.append(f"{n}, {second['label']}: distance reduced " + (f"{v:.1%}" if v is not None else "-"))
    ceilings = []
    for n, r in payload["styles"].items():
        c = r.get("ceilings") or {}
        parts = [f"{k} {c[k]['distance_reduction']:.1%}" for k in ("transform", "head")
                 if c.get(k) and c[k]["distance_reduction"] is not None]
        if parts:
            ceilings.append(f"{n} " + " / ".join(parts))
    if ceilings:
        lines.append("distance reduced at most (the style's transform of the base images / the closest images the "
                     "frozen head can output): " + ", ".join(ceilings))
    lines.append(f"targets: distance reduced >= {payload['targets']['style_distance_reduction']:.0%}, "
                 f"shape found in >= {payload['targets']['styled_shape_accuracy']:.0%} of styled images; "
                 f"met: {sum(payload['meets_targets'].values())} of {len(payload['meets_targets'])}")
    return "\n".join(lines)


def styles_result(payload: dict, grid, device: str) -> BenchResult:
    slug = f"{re.sub(r'[^a-z0-9]+', '-', payload['model'].lower()).strip('-')[:32]}-{device_slug(resolve_device(device))}"
    grid_name = f"styles-grid-{slug}.png"
    payload["grid_png"] = grid_name
    return BenchResult(f"styles-{slug}", payload, format_styles(payload), figures={grid_name: grid.save})
