"""`restune bench accuracy`: what `train classify` gets on real images (the digits task), and how robust it is.

Data: the built-in `digits` task (scikit-learn's 1,797 real handwritten 8×8 digits; the fixed 599-image test split
of seed 0, and 10 % of the 1,198 training images held out for validation), on a random-init
`vit_tiny_patch16_224` (weights `random:0`). The test split is only evaluated, never used to choose anything.

1. Recipes. `train classify` itself (`training.classify.train_classify`, the code the command runs), the bypass,
   with the command's defaults and nothing else (`default`), with `--no-augment` (`no_augment`), and with the
   defaults this recipe replaced (`previous`: crop/flip wherever the labels allow, a randomly initialised head,
   lr 0.01). Each is timed end to end (data, backbone, probe, epochs, test); with `--repeats N` the recipes take
   turns N times, so that a machine whose speed drifts slows them alike, and the median counts. Like the
   command, no feature cache unless `--feature-cache` is given.
2. Sweep. Each method (linear probing, the bypass, full fine-tuning) trains under the default recipe at every
   lr × weight-decay candidate: whether the defaults sit on a plateau or on a cliff. The candidate with the best
   validation accuracy is reported next to the run at the method's own defaults; every candidate is kept in the
   JSON. Linear probing and the bypass train from one shared feature cache (float32, on disk in a temporary
   directory unless --cache-dir is given), full fine-tuning reads images.
"""
from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.accuracy_config import (
    METHODS,
    RECIPES,
    SWEEP_LRS,
    SWEEP_WDS,
    TARGET_DEFAULT_TEST,
    TARGET_GAP_POINTS,
    TARGET_TIME_RATIO,
    recipe_flags,
)
from bench.common import machine_info
from restuning.backbones import create_backbone
from training import demo_tasks
from training.classify import ClassifyOptions, train_classify
from training.data import make_splits
from training.methods import MethodSpec, build_model
from training.train_config import DEFAULT_LR, TrainSettings
from training.trainer import Trainer

log = logging.getLogger(__name__)

def _summary(metrics: dict) -> dict:
    keep = ("train_accuracy", "val_accuracy", "test_accuracy", "augmentation", "head_init", "lr", "weight_decay",
            "trainable_params")
    return {k: metrics.get(k) for k in keep}


def run_recipes(*, recipes, backbone: str, weights: str, pooling: str | None, base: TrainSettings, task: str,
                repeats: int, sizes: dict | None, directory: str) -> dict:
    """Each recipe through `train_classify`, in turns; wall seconds per run and their median."""
    out: dict[str, dict] = {r: {"flags": recipe_flags(r), "runs": []} for r in recipes}
    for round_ in range(repeats):
        for recipe in recipes:
            settings = replace(base, **RECIPES[recipe])
            opts = ClassifyOptions(data=task, backbone=backbone, weights=weights, spec=MethodSpec(pooling=pooling),
                                   train=settings, name=f"{task}-{recipe}",
                                   out=str(Path(directory) / f"{recipe}.safetensors"), builtin_sizes=sizes)
            start = time.perf_counter()
            result = train_classify(opts)
            seconds = time.perf_counter() - start
            run = {**_summary(result.metrics), "seconds": round(seconds, 1),
                   "train_seconds": round(result.result.seconds, 1),
                   "extraction_seconds": round(result.result.extraction_seconds, 1), "round": round_ + 1}
            out[recipe]["runs"].append(run)
            log.info("recipe %s (round %d): test %.4f, %.0f s", recipe, round_ + 1, run["test_accuracy"], seconds)
    for recipe, entry in out.items():
        first = entry["runs"][0]  # the same settings and seed: every round trains the same weights
        entry.update({k: first[k] for k in first if k not in ("seconds", "train_seconds", "round")})
        entry["seconds"] = round(statistics.median(r["seconds"] for r in entry["runs"]), 1)
        entry["train_seconds"] = round(statistics.median(r["train_seconds"] for r in entry["runs"]), 1)
    return out


def run_sweep(*, methods, lrs: dict, wds: dict, net, splits, labels, pooling: str | None, base: TrainSettings,
              directory: str) -> dict:
    results: dict[str, dict] = {}
    shared: dict | None = None  # the bypass's cache (every layer) also serves linear probing (x_0 and x_L)
    for method in sorted(methods, key=lambda m: {"bypass": 0, "linear": 1}.get(m, 2)):
        spec = MethodSpec(method=method, pooling=pooling)
        cached = method in ("bypass", "linear")
        own = (DEFAULT_LR[method], base.weight_decay)
        grid = [(lr, wd) for lr in lrs[method] for wd in wds[method]]
        if own not in grid:
            grid.append(own)
        candidates = []
        for lr, wd in grid:
            settings = replace(base, method=method, lr=lr, weight_decay=wd, feature_cache=cached,
                               cache_dir=directory, cache_max_gb=64.0)
            model = build_model(spec, net, [(labels.name, labels.num_classes)], seed=base.seed)
            trainer = Trainer(net, splits, model, settings, caches=shared if cached else None)
            start = time.perf_counter()
            result = trainer.fit()
            if cached and shared is None and method == "bypass":
                shared = trainer.caches
            m = result.metrics[labels.name]
            candidates.append({"lr": lr, "weight_decay": wd, "train_accuracy": m["train_accuracy"],
                               "val_accuracy": m["val_accuracy"], "test_accuracy": m["test_accuracy"],
                               "seconds": round(time.perf_counter() - start, 1),
                               "extraction_seconds": round(result.extraction_seconds, 1),
                               "trainable_params": result.trainable_params, **result.recipe})
            log.info("sweep %s lr %g wd %g: val %.4f test %.4f (%.0f s)", method, lr, wd, m["val_accuracy"],
                     m["test_accuracy"], candidates[-1]["seconds"])
        at_default = next(c for c in candidates if (c["lr"], c["weight_decay"]) == own)
        best = max(candidates, key=lambda c: c["val_accuracy"])  # the first listed candidate wins ties
        tests = [c["test_accuracy"] for c in candidates]
        results[method] = {"at_default": at_default, "best_by_val": best, "test_range": [min(tests), max(tests)],
                           "candidates": candidates, "structure": spec.to_json()}
    return results


def run_digits_accuracy(*, backbone: str = "vit_tiny_patch16_224", weights: str = "random:0",
                        pooling: str | None = None, epochs: int | None = None, batch_size: int | None = None,
                        seed: int = 0, recipes=tuple(RECIPES), repeats: int = 1, feature_cache: bool = False,
                        methods=METHODS, lrs: dict | None = None, wds: dict | None = None, device: str = "cpu",
                        cache_dir: str | None = None, task: str = "digits", sizes: dict | None = None,
                        progress: bool = True) -> dict:
    defaults = TrainSettings()
    base = TrainSettings(epochs=epochs or defaults.epochs, batch_size=batch_size or defaults.batch_size, seed=seed,
                         device=device, progress=progress, log_epochs=False, feature_cache=feature_cache)
    lrs = {**SWEEP_LRS, **(lrs or {})}
    wds = {**SWEEP_WDS, **(wds or {})}
    sizes = sizes or None  # tests shrink the splits; the benchmark uses all of them
    tmp = tempfile.TemporaryDirectory(prefix="restune-accuracy-")
    directory = cache_dir or tmp.name
    try:
        recipe_results = run_recipes(recipes=recipes, backbone=backbone, weights=weights, pooling=pooling, base=base,
                                     task=task, repeats=repeats, sizes=sizes, directory=tmp.name)
        net = create_backbone(backbone, weights=weights, device=device)
        sweep = {}
        if methods:
            pool = demo_tasks.load_task(task, "train", seed=seed, size=(sizes or {}).get("train"))
            test = demo_tasks.load_task(task, "test", seed=seed, size=(sizes or {}).get("test"))
            splits = make_splits(pool, val_fraction=0.1, seed=seed, test=test)
            sweep = run_sweep(methods=methods, lrs=lrs, wds=wds, net=net, splits=splits, labels=pool.tasks[0],
                              pooling=pooling, base=base, directory=directory)
    finally:
        tmp.cleanup()
    payload = {
        "benchmark": "digits-accuracy", **machine_info(device),
        "settings": {"task": task, "backbone": backbone, "weights": net.info.weights,
                     "pooling": pooling or net.info.pooling, "epochs": base.epochs, "batch_size": base.batch_size,
                     "seed": seed, "val_fraction": 0.1, "optimizer": "AdamW",
                     "schedule": "cosine, linear warm-up over a tenth of the epochs",
                     "recipes_feature_cache": feature_cache, "repeats": repeats,
                     "lr_candidates": {m: list(lrs[m]) for m in methods},
                     "weight_decay_candidates": {m: list(wds[m]) for m in methods},
                     "bypass": "H + V adapters, dim 10, every layer",
                     "linear": "Linear head on the backbone's pooled final features (frozen backbone)",
                     "full": "every backbone weight + a Linear head (always a random head)"},
        "recipes": recipe_results,
        "sweep": sweep,
        "targets": {"default_test": f"default recipe: test accuracy >= {TARGET_DEFAULT_TEST:g}",
                    "time_ratio": f"default recipe / --no-augment, seconds: <= {TARGET_TIME_RATIO:g}",
                    "not_worse": "default recipe: test accuracy >= --no-augment's",
                    "gap": f"sweep: bypass - linear probing at their defaults >= {TARGET_GAP_POINTS:g} points (test)"},
        "meets": {},
    }
    meets = payload["meets"]
    if "default" in recipe_results:
        default = recipe_results["default"]
        meets["default_test"] = default["test_accuracy"] >= TARGET_DEFAULT_TEST
        if "no_augment" in recipe_results:
            plain = recipe_results["no_augment"]
            payload["time_ratio_default_vs_no_augment"] = round(default["seconds"] / plain["seconds"], 3)
            payload["default_minus_no_augment_points"] = round(
                100.0 * (default["test_accuracy"] - plain["test_accuracy"]), 2)
            meets["time_ratio"] = payload["time_ratio_default_vs_no_augment"] <= TARGET_TIME_RATIO
            meets["not_worse"] = default["test_accuracy"] >= plain["test_accuracy"]
    if "bypass" in sweep and "linear" in sweep:
        gap = 100.0 * (sweep["bypass"]["at_default"]["test_accuracy"] - sweep["linear"]["at_default"]["test_accuracy"])
        payload["bypass_minus_linear_points"] = round(gap, 2)
        meets["gap"] = gap >= TARGET_GAP_POINTS
    return payload


def format_accuracy(payload: dict) -> str:
    s = payload["settings"]
    cache = ", feature cache" if s["recipes_feature_cache"] else ""
    lines = [f"{payload['device']}: {s['task']} on {s['backbone']} ({s['weights']}), pooling {s['pooling']}, "
             f"{s['epochs']} epochs, batch {s['batch_size']}",
             f"train classify, bypass{cache} ({s['repeats']} round(s), median seconds):",
             f"  {'recipe':<11} {'flags':<42} {'aug':>6} {'head':>6} {'lr':>7} {'train':>7} {'val':>7} {'test':>7} "
             f"{'seconds':>8}"]
    for recipe, r in payload["recipes"].items():
        lines.append(f"  {recipe:<11} {r['flags']:<42} {r['augmentation']:>6} {r['head_init']:>6} {r['lr']:>7g} "
                     f"{r['train_accuracy']:7.4f} {r['val_accuracy']:7.4f} {r['test_accuracy']:7.4f} "
                     f"{r['seconds']:8.1f}")
    meets = payload["meets"]

    def verdict(key: str) -> str:
        return "met" if meets[key] else "NOT met"

    if "default_test" in meets:
        lines.append(f"default test accuracy >= {TARGET_DEFAULT_TEST:g}: {verdict('default_test')}")
    if "time_ratio" in meets:
        lines.append(f"default / --no-augment time: {payload['time_ratio_default_vs_no_augment']:.2f}x "
                     f"(target <= {TARGET_TIME_RATIO:g}: {verdict('time_ratio')}); test "
                     f"{payload['default_minus_no_augment_points']:+.2f} points (not worse: {verdict('not_worse')})")
    if payload["sweep"]:
        lines.append("sweep, default recipe (bypass/linear from the feature cache): lr x weight decay")
        lines.append(f"  {'method':<8} {'run':<11} {'lr':>7} {'wd':>5} {'params':>10} {'train':>7} {'val':>7} "
                     f"{'test':>7}   test over all candidates")
        for method, r in payload["sweep"].items():
            for run in ("at_default", "best_by_val"):
                x = r[run]
                lines.append(f"  {method:<8} {run:<11} {x['lr']:>7g} {x['weight_decay']:>5g} "
                             f"{x['trainable_params']:>10,} {x['train_accuracy']:7.4f} {x['val_accuracy']:7.4f} "
                             f"{x['test_accuracy']:7.4f}   {r['test_range'][0]:.4f}-{r['test_range'][1]:.4f}")
    if "gap" in meets:
        lines.append(f"bypass - linear probing at their defaults: {payload['bypass_minus_linear_points']:+.2f} "
                     f"points (target >= {TARGET_GAP_POINTS:g}: {verdict('gap')})")
    return "\n".join(lines)
