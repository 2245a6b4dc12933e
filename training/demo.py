"""`restune demo`: train the 19 demo tuners (training.demo_tasks) and push them into a store.

One backbone, four image sets. For each set the frozen backbone runs once over its images (the feature
cache; no augmentation applies: every set but the digits has a task whose label a flip or crop would
change, and the digits are 8 px images, which `--augment auto` trains without), then one bypass head per
task starts from a linear probe and trains from the cache in the same pass (summed losses), and each head
becomes a tuner artifact. Defaults are sized to finish in about 5 minutes on 2 CPU cores with
vit_tiny_patch16_224:

    digits   1,000 train (10 % of it held out for validation), 500 test
    sprites, clevr, norb   800 train (10 % validation), 300 test each
    25 epochs, batch 32, bypass H + V adapters, dim 10, every layer, lr 0.001 (train classify's default)

That is 4,800 backbone forwards in all; training from the cached class tokens is cheap by comparison.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from restuning.backbones import DEFAULT_BACKBONE, create_backbone
from training import demo_tasks
from training.data import make_splits
from training.distributed import resolve_device
from training.methods import MethodSpec, build_model
from training.train_config import DEFAULT_LR, TrainSettings
from training.trainer import Trainer, majority_rate
from tuner_store.artifact import classification_artifact
from tuner_store.urls import DEFAULT_STORE_URL, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSizes:
    train: dict[str, int] = field(default_factory=lambda: {"digits": 1000, "sprites": 800, "clevr": 800,
                                                           "norb": 800})
    test: dict[str, int] = field(default_factory=lambda: {"digits": 500, "sprites": 300, "clevr": 300,
                                                          "norb": 300})
    epochs: int = 25
    batch_size: int = 32
    val_fraction: float = 0.1
    lr: float = DEFAULT_LR["bypass"]

    @classmethod
    def uniform(cls, train: int, test: int, **kwargs) -> "DemoSizes":
        return cls(train={s: train for s in demo_tasks.IMAGE_SETS}, test={s: test for s in demo_tasks.IMAGE_SETS},
                   **kwargs)


@dataclass
class DemoRow:
    task: str
    image_set: str
    num_classes: int
    train_accuracy: float
    val_accuracy: float | None
    test_accuracy: float
    chance: float
    ref: str


@dataclass
class DemoReport:
    rows: list[DemoRow]
    records: list
    seconds: float
    backbone: str
    weights: str
    sizes: DemoSizes
    store: str


def run_demo_report(store_url: str | None = None, *, backbone: str = DEFAULT_BACKBONE, weights: str = "auto",
                    seed: int = 0, progress: bool = True, sizes: DemoSizes | None = None,
                    device: str = "auto", workers: int = 0) -> DemoReport:
    start = time.perf_counter()
    sizes = sizes or DemoSizes()
    store_url = store_url or DEFAULT_STORE_URL
    store = open_store(store_url)  # a bad URL fails here, before any training
    device = resolve_device(device)
    net = create_backbone(backbone, weights=weights, device=device)
    log.info("demo: backbone %s, weights %s, device %s", backbone, net.info.weights, device)
    rows: list[DemoRow] = []
    records = []
    spec = MethodSpec(method="bypass")
    try:
        for set_name in demo_tasks.IMAGE_SETS:
            pool = demo_tasks.load_image_set(set_name, "train", seed=seed, size=sizes.train[set_name])
            test = demo_tasks.load_image_set(set_name, "test", seed=seed, size=sizes.test[set_name])
            splits = make_splits(pool, val_fraction=sizes.val_fraction, seed=seed, test=test)
            tasks = [(t.name, t.num_classes) for t in pool.tasks]
            model = build_model(spec, net, tasks, seed=seed)
            settings = TrainSettings(method="bypass", epochs=sizes.epochs, batch_size=sizes.batch_size, lr=sizes.lr,
                                     seed=seed, feature_cache=True, cache_views=1, device=device, workers=workers,
                                     progress=progress, log_epochs=False)
            set_start = time.perf_counter()
            result = Trainer(net, splits, model, settings).fit()
            log.info("demo: %s: %d tasks trained in %.1f s (feature extraction %.1f s)", set_name, len(tasks),
                     time.perf_counter() - set_start, result.extraction_seconds)
            for column, task in enumerate(pool.tasks):
                m = result.metrics[task.name]
                metrics = {**m, "method": "bypass", "epochs": result.epochs_completed, "demo": True,
                           "image_set": set_name, "data_fingerprint": pool.fingerprint(), "seed": seed,
                           "num_train": len(splits.train), "num_val": len(splits.val) if splits.val else 0,
                           "num_test": len(test), "chance_accuracy": majority_rate(test, column),
                           "feature_cache": True}
                head = model.head(task.name).to("cpu")
                artifact = classification_artifact(task.name, head, list(task.labels), net, metrics)
                record = store.put(artifact)
                records.append(record)
                rows.append(DemoRow(task.name, set_name, task.num_classes, m["train_accuracy"], m.get("val_accuracy"),
                                    m["test_accuracy"], metrics["chance_accuracy"], record.ref))
    finally:
        store.close()
    return DemoReport(rows=rows, records=records, seconds=time.perf_counter() - start, backbone=backbone,
                      weights=net.info.weights, sizes=sizes, store=store_url)


def run_demo(store_url: str | None = None, *, backbone: str = DEFAULT_BACKBONE, weights: str = "auto",
             seed: int = 0, progress: bool = True, sizes: DemoSizes | None = None, device: str = "auto") -> list:
    """Train and push the 19 demo tuners; returns their TunerRecords (what the server's --demo-if-empty calls)."""
    return run_demo_report(store_url, backbone=backbone, weights=weights, seed=seed, progress=progress, sizes=sizes,
                           device=device).records


def format_table(report: DemoReport) -> str:
    lines = [f"{'task':<20} {'classes':>7} {'train':>7} {'val':>7} {'test':>7} {'chance':>7}  tuner"]
    for r in report.rows:
        val = f"{r.val_accuracy:7.3f}" if r.val_accuracy is not None else f"{'-':>7}"
        lines.append(f"{r.task:<20} {r.num_classes:>7} {r.train_accuracy:7.3f} {val} {r.test_accuracy:7.3f} "
                     f"{r.chance:7.3f}  {r.ref}")
    mean_test = sum(r.test_accuracy for r in report.rows) / max(1, len(report.rows))
    mean_chance = sum(r.chance for r in report.rows) / max(1, len(report.rows))
    lines.append(f"{'mean':<20} {'':>7} {'':>7} {'':>7} {mean_test:7.3f} {mean_chance:7.3f}")
    lines.append(f"{len(report.rows)} tuners pushed to {report.store} in {report.seconds:.1f} s "
                 f"(backbone {report.backbone}, weights {report.weights}; chance = share of the most frequent "
                 "test class)")
    return "\n".join(lines)
