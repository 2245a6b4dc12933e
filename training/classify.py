"""`restune train classify`: data in, a trained tuner artifact out (and pushed, when asked).

Order of work, so that a mistake costs seconds rather than a training run: validate every option
(one error listing all problems) -> check the output path and the push target -> scan the data
(unreadable images counted and reported) -> build the backbone -> train -> write the artifact ->
push. If the push fails, the artifact is already on disk and the error says how to push it later.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save

from restuning.backbones import create_backbone
from restuning.errors import ConfigError
from training.data import ImageSet, Splits, make_splits, sanitize_name
from training.distributed import DistInfo, init_distributed, resolve_device
from training.methods import SERVABLE_METHODS, MethodSpec, build_model, trainable_state
from training.push import check_target, push_artifact
from training.sources import resolve_data
from training.train_config import TrainSettings
from training.trainer import Trainer, TrainResult, majority_rate
from tuner_store.artifact import classification_artifact, name_problems, write_artifact
from tuner_store.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

BASELINE_METADATA_KEY = "restune_baseline"


@dataclass
class ClassifyOptions:
    data: str
    backbone: str = "vit_tiny_patch16_224"
    weights: str = "auto"
    spec: MethodSpec = field(default_factory=MethodSpec)
    train: TrainSettings = field(default_factory=TrainSettings)
    name: str | None = None
    out: str | None = None
    push: str | None = None
    val_data: str | None = None
    val_fraction: float = 0.1
    builtin_sizes: dict | None = None  # built-in tasks: {"train": n, "test": n}

    def problems(self) -> list[str]:
        problems = self.spec.problems() + self.train.problems()
        if self.spec.method != self.train.method:
            problems.append(f"method mismatch: spec {self.spec.method!r} vs settings {self.train.method!r}")
        if not (0 <= self.val_fraction < 1):
            problems.append(f"val-fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.name is not None:
            problems += [f"--name: {p}" for p in name_problems(self.name)]
        if self.push and self.spec.method not in SERVABLE_METHODS:
            problems.append(
                f"--push: --method {self.spec.method} does not produce a servable tuner (only "
                f"{', '.join(SERVABLE_METHODS)} do); drop --push, its weights are saved with --out"
            )
        if self.out is not None and not str(self.out).endswith(".safetensors"):
            problems.append(f"--out {self.out!r} must end in .safetensors")
        return problems


@dataclass
class ClassifyResult:
    name: str
    method: str
    out: Path | None
    pushed: str | None
    metrics: dict
    result: TrainResult
    data_report: str
    servable: bool
    unreadable: list = field(default_factory=list)


def _check_output(path: Path) -> None:
    parent = path.resolve().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {path}: {existing} is not a directory")

    if not os.access(existing, os.W_OK):
        raise ConfigError(f"--out {path}: cannot write into {existing}")


def load_splits(opts: ClassifyOptions, *, progress: bool) -> tuple[Splits, ImageSet]:
    pool, test = resolve_data(opts.data, seed=opts.train.seed, workers=max(1, opts.train.workers or 4),
                              progress=progress, builtin_sizes=opts.builtin_sizes)
    val = None
    if opts.val_data:
        val, _ = resolve_data(opts.val_data, seed=opts.train.seed, workers=max(1, opts.train.workers or 4),
                              progress=progress)
    splits = make_splits(pool, val_fraction=opts.val_fraction, seed=opts.train.seed, val=val, test=test)
    return splits, pool


def metrics_for(task: str, result: TrainResult, splits: Splits, pool: ImageSet, opts: ClassifyOptions) -> dict:
    m = dict(result.metrics[task])
    m.update(
        method=opts.spec.method, epochs=result.epochs_completed, data_fingerprint=pool.fingerprint(),
        data=opts.data, num_train=len(splits.train), num_val=len(splits.val) if splits.val is not None else 0,
        num_test=len(splits.test) if splits.test is not None else 0, unreadable_images=len(pool.unreadable),
        lr=opts.train.learning_rate, weight_decay=opts.train.weight_decay, batch_size=opts.train.batch_size, seed=opts.train.seed,
        feature_cache=opts.train.feature_cache, trainable_params=result.trainable_params,
        augmentation=result.recipe.get("augmentation"), head_init=result.recipe.get("head_init"),
    )
    column = splits.train.task_names.index(task)
    m["chance_accuracy"] = majority_rate(splits.test or splits.val or splits.train, column)
    return {k: v for k, v in m.items() if v is not None}


def write_baseline(path: Path, model, *, name: str, labels: list[str], backbone, opts: ClassifyOptions,
                   metrics: dict) -> Path:
    """full / restuning weights: a plain safetensors file (trained tensors + JSON metadata), not a tuner artifact."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in trainable_state(model).items()}
    meta = {"name": name, "method": opts.spec.method, "structure": opts.spec.to_json(), "labels": labels,
            "backbone": {"name": backbone.info.name, "fingerprint": backbone.fingerprint(),
                         "weights": backbone.info.weights},
            "metrics": metrics,
            "note": "a training baseline, not a Res-Tuning-Bypass tuner: the server cannot load it"}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata={"format": "pt", BASELINE_METADATA_KEY: json.dumps(meta)}))
    return path


def train_classify(opts: ClassifyOptions, *, dist: DistInfo | None = None) -> ClassifyResult:
    problems = opts.problems()
    if problems:
        raise ConfigError(problems)
    device = resolve_device(opts.train.device)
    opts.train.device = device
    dist = dist or init_distributed(device)
    progress = opts.train.progress and dist.is_main
    if opts.push:
        check_target(opts.push)
    splits, pool = load_splits(opts, progress=progress)
    name = opts.name or sanitize_name(pool.name)
    out = Path(opts.out) if opts.out else Path(f"{name}.safetensors")
    _check_output(out)
    if dist.is_main:
        log.info("%s", pool.report())
        log.info("split: %d train, %d val%s", len(splits.train), len(splits.val) if splits.val else 0,
                 f", {len(splits.test)} test" if splits.test is not None else "")
    backbone = create_backbone(opts.backbone, weights=opts.weights, device=device)
    if backbone.info.weights.startswith("random") and dist.is_main:
        log.warning("training on a backbone with RANDOM weights (%s); use --weights pretrained for real use",
                    backbone.info.weights)
    task = splits.train.tasks[0]
    model = build_model(opts.spec, backbone, [(task.name, task.num_classes)], seed=opts.train.seed)
    identity = {"structure": opts.spec.to_json(), "backbone": opts.backbone}
    trainer = Trainer(backbone, splits, model, opts.train, dist=dist, identity=identity)
    result = trainer.fit()
    metrics = metrics_for(task.name, result, splits, pool, opts)
    servable = opts.spec.method in SERVABLE_METHODS
    pushed = None
    if dist.is_main:
        if servable:
            head = model.head(task.name).to("cpu")
            artifact = classification_artifact(name, head, list(task.labels), backbone, metrics)
            write_artifact(artifact, out)
            if opts.push:
                pushed = push_artifact(artifact, opts.push, artifact_path=str(out))
        else:
            write_baseline(out, model.to("cpu"), name=name, labels=list(task.labels), backbone=backbone,
                           opts=opts, metrics=metrics)
    dist.barrier()
    return ClassifyResult(name=name, method=opts.spec.method, out=out, pushed=pushed, metrics=metrics,
                          result=result, data_report=pool.report(), servable=servable,
                          unreadable=list(pool.unreadable))


def summary_lines(result: ClassifyResult) -> list[str]:
    m = result.metrics
    lines = [result.data_report]
    lines.append(f"trained {result.name} ({result.method}, {result.result.trainable_params:,} trainable params, "
                 f"{m.get('epochs')} epochs, {result.result.seconds:.1f} s)")
    acc = [f"{k.removesuffix('_accuracy')} {m[k]:.4f}" for k in ("train_accuracy", "val_accuracy", "test_accuracy")
           if k in m]
    lines.append("accuracy: " + ", ".join(acc) + f" (chance: majority class {m['chance_accuracy']:.4f})")
    lines += result.result.notes
    if result.out is not None:
        kind = "tuner artifact" if result.servable else "baseline weights (not servable by the bypass server)"
        lines.append(f"wrote {result.out} ({kind})")
    if result.pushed:
        lines.append(f"pushed {result.pushed}")
    return lines
