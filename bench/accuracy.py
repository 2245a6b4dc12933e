"""`restune bench accuracy`: bypass vs linear probing vs full fine-tuning on real images (the digits task).

All three methods train with the same trainer on the same data: the built-in `digits` task (scikit-learn's
1,797 real handwritten digits; the fixed 599-image test split of seed 0, and 10 % of the 1,198 training
images held out for validation), the same random-init `vit_tiny_patch16_224` (weights `random:0`), the
same pooling, epochs, batch size, schedule (AdamW, weight decay 0.05, cosine with 10 % warm-up) and the
same augmentation setting. Each method picks its learning rate from its own candidate list by validation
accuracy; the test split is only evaluated, and every candidate's numbers are kept in the JSON.

Linear probing and the bypass train from one shared feature cache (float32, on disk in a temporary
directory unless --cache-dir is given); full fine-tuning reads images.
"""
from __future__ import annotations

import logging
import tempfile
import time

from bench.common import machine_info
from restuning.backbones import create_backbone
from training import demo_tasks
from training.data import make_splits
from training.methods import MethodSpec, build_model
from training.trainer import Trainer, TrainSettings

log = logging.getLogger(__name__)

DEFAULT_LRS = {"linear": (0.2, 0.1, 0.05, 0.01), "bypass": (0.05, 0.01, 0.005), "full": (3e-4, 1e-4)}
METHODS = ("linear", "bypass", "full")
TARGET_GAP_POINTS = 10.0


def run_digits_accuracy(*, backbone: str = "vit_tiny_patch16_224", weights: str = "random:0",
                        pooling: str | None = "avg", epochs: int = 20, batch_size: int = 32, seed: int = 0,
                        methods=METHODS, lrs: dict | None = None, augment: bool = False, device: str = "cpu",
                        cache_dir: str | None = None, task: str = "digits", val_fraction: float = 0.1,
                        sizes: dict | None = None, progress: bool = True) -> dict:
    lrs = {**DEFAULT_LRS, **(lrs or {})}
    net = create_backbone(backbone, weights=weights, device=device)
    sizes = sizes or {}  # tests shrink the splits; the benchmark uses all of them
    pool = demo_tasks.load_task(task, "train", seed=seed, size=sizes.get("train"))
    test = demo_tasks.load_task(task, "test", seed=seed, size=sizes.get("test"))
    splits = make_splits(pool, val_fraction=val_fraction, seed=seed, test=test)
    labels = pool.tasks[0]
    settings_common = dict(epochs=epochs, batch_size=batch_size, seed=seed, augment=augment, device=device,
                           progress=progress, log_epochs=False, cache_views=4)
    results: dict[str, dict] = {}
    shared: dict | None = None
    tmp = tempfile.TemporaryDirectory(prefix="restune-accuracy-") if cache_dir is None else None
    directory = cache_dir or tmp.name
    try:
        # The bypass first: its cache (every layer) also serves linear probing (x_0 and x_L).
        for method in sorted(methods, key=lambda m: {"bypass": 0, "linear": 1}.get(m, 2)):
            spec = MethodSpec(method=method, pooling=pooling)
            sweep = []
            for lr in lrs[method]:
                cached = method in ("bypass", "linear")
                settings = TrainSettings(method=method, lr=lr, feature_cache=cached, cache_dir=directory,
                                         cache_max_gb=64.0, **settings_common)
                model = build_model(spec, net, [(labels.name, labels.num_classes)], seed=seed)
                trainer = Trainer(net, splits, model, settings, caches=shared if cached else None)
                start = time.perf_counter()
                result = trainer.fit()
                if cached and shared is None and method == "bypass":
                    shared = trainer.caches
                m = result.metrics[labels.name]
                sweep.append({"lr": lr, "train_accuracy": m["train_accuracy"], "val_accuracy": m["val_accuracy"],
                              "test_accuracy": m["test_accuracy"], "seconds": round(time.perf_counter() - start, 1),
                              "extraction_seconds": round(result.extraction_seconds, 1),
                              "trainable_params": result.trainable_params})
                log.info("%s lr %g: val %.4f test %.4f (%.0f s)", method, lr, m["val_accuracy"], m["test_accuracy"],
                         sweep[-1]["seconds"])
            best = max(sweep, key=lambda r: r["val_accuracy"])  # first (largest listed) lr wins ties
            results[method] = {**best, "selected_by": "val_accuracy", "sweep": sweep,
                               "structure": spec.to_json()}
    finally:
        if tmp is not None:
            tmp.cleanup()
    payload = {
        "benchmark": "digits-accuracy", **machine_info(device),
        "settings": {"task": task, "backbone": backbone, "weights": net.info.weights,
                     "pooling": pooling or net.info.pooling, "epochs": epochs, "batch_size": batch_size,
                     "seed": seed, "augment": augment, "optimizer": "AdamW", "weight_decay": 0.05,
                     "schedule": "cosine, 10% linear warm-up", "lr_candidates": {m: list(lrs[m]) for m in methods},
                     "num_train": len(splits.train), "num_val": len(splits.val), "num_test": len(test),
                     "data_fingerprint": pool.fingerprint(), "test_fingerprint": test.fingerprint(),
                     "bypass": "H + V adapters, dim 10, every layer",
                     "linear": "Linear head on the backbone's pooled final features (frozen backbone)",
                     "full": "every backbone weight + a Linear head"},
        "results": results,
        "target": f"bypass beats linear probing by >= {TARGET_GAP_POINTS:g} points on the test split",
    }
    if "bypass" in results and "linear" in results:
        gap = 100.0 * (results["bypass"]["test_accuracy"] - results["linear"]["test_accuracy"])
        payload["bypass_minus_linear_points"] = round(gap, 2)
        payload["meets_target"] = gap >= TARGET_GAP_POINTS
    return payload


def format_accuracy(payload: dict) -> str:
    s = payload["settings"]
    lines = [f"{payload['device']}: {s['task']} on {s['backbone']} ({s['weights']}), pooling {s['pooling']}, "
             f"{s['epochs']} epochs, batch {s['batch_size']}, augment {s['augment']}; "
             f"{s['num_train']} train / {s['num_val']} val / {s['num_test']} test",
             f"{'method':>8} {'lr':>8} {'params':>10} {'train':>7} {'val':>7} {'test':>7}"]
    for method, r in payload["results"].items():
        lines.append(f"{method:>8} {r['lr']:>8g} {r['trainable_params']:>10,} {r['train_accuracy']:7.4f} "
                     f"{r['val_accuracy']:7.4f} {r['test_accuracy']:7.4f}")
    if "bypass_minus_linear_points" in payload:
        lines.append(f"bypass - linear probing: {payload['bypass_minus_linear_points']:+.2f} points on the test split "
                     f"(target >= {TARGET_GAP_POINTS:g}: {'met' if payload['meets_target'] else 'NOT met'})")
    return "\n".join(lines)
