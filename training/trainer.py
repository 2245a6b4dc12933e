"""One trainer for every method: bypass and linear probing (frozen backbone, features on the fly or
from the feature cache, any number of tasks on the same images), full fine-tuning and Res-Tuning.

Recipe (paper appendix C.3, Table 10): AdamW, weight decay 0.05, batch 32, cosine decay after a linear
warm-up (10 % of the epochs by default, as 10 of 100 in Table 10), RandomResizedCrop + horizontal flip
where every task's labels allow them and the images are not low-resolution (`training.augment`). Feature
heads (bypass, linear) start from a linear probe fitted on their initial features (`training.probe`).
Each epoch ends with a validation pass and a checkpoint.

Determinism: the epoch order comes from DistributedSampler (seed + epoch), each image's augmentation from
its own (seed, index, view) generator, the heads' initialisation from the seed; a run resumed from a
checkpoint therefore ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from restuning.backbones.base import Backbone
from restuning.errors import ConfigError
from restuning.preprocess import ImagePreprocessor
from training.augment import ViewDataset, choose_augmentation
from training.checkpoint import load_checkpoint, restore, save_checkpoint
from training.data import ImageSet, Splits
from training.distributed import DistInfo
from training.feature_cache import (
    CacheLayout,
    FeatureCache,
    build_feature_cache,
    cache_key,
    plan_views,
    select_tokens,
)
from training.methods import (
    FeatureHeads,
    count_trainable,
    trainable_parameters,
    trainable_state,
)
from training.probe import fit_linear_probe
from training.train_config import TrainSettings

log = logging.getLogger(__name__)

@dataclass
class TrainResult:
    tasks: list[str]
    metrics: dict[str, dict]  # task -> train/val/test accuracy and loss
    history: list[dict]
    epochs_completed: int
    seconds: float
    extraction_seconds: float = 0.0
    cache: dict | None = None
    trainable_params: int = 0
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)
    recipe: dict = field(default_factory=dict)  # what the run's defaults resolved to (augmentation, head init)


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR factor: linear warm-up to 1 over `warmup_steps`, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class _Stats:
    """Running loss sum, correct count and sample count per task; summed over ranks at the end."""

    def __init__(self, tasks: list[str]):
        self.tasks = tasks
        self.values = torch.zeros(len(tasks), 3, dtype=torch.float64)

    def add(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], losses: dict) -> None:
        for i, task in enumerate(self.tasks):
            n = targets[task].numel()
            self.values[i, 0] += float(losses[task]) * n
            self.values[i, 1] += float((logits[task].argmax(1) == targets[task]).sum())
            self.values[i, 2] += n

    def result(self, dist: DistInfo) -> dict[str, dict]:
        dist.all_reduce_sum(self.values)
        out = {}
        for i, task in enumerate(self.tasks):
            loss, correct, n = self.values[i].tolist()
            out[task] = {"loss": loss / n if n else None, "accuracy": correct / n if n else None, "count": int(n)}
        return out


class Trainer:
    """Trains `model` (FeatureHeads or ImageHeads) on `splits`; only rank 0 prints and writes."""

    def __init__(self, backbone: Backbone, splits: Splits, model: nn.Module, settings: TrainSettings, *,
                 dist: DistInfo | None = None, identity: dict | None = None,
                 caches: dict[str, FeatureCache] | None = None):
        problems = settings.problems()
        if problems:
            raise ConfigError(problems)
        self.splits = splits
        self.settings = settings
        self.dist = dist or DistInfo()
        self.device = torch.device(settings.device)
        self.backbone = backbone.to(self.device)
        self.model = model.to(self.device)
        self.features = isinstance(model, FeatureHeads)
        self.tasks = [t.name for t in splits.train.tasks]
        self.targets = {
            name: {task: torch.as_tensor(data.targets[:, j]) for j, task in enumerate(self.tasks)}
            for name, data in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if data is not None
        }
        pre = ImagePreprocessor(backbone.info)
        train = splits.train
        self.augmentation, self.augmentation_note = choose_augmentation(
            settings.augment, train, crop_scale=settings.crop_scale, seed=settings.seed)
        self.datasets = {"train": ViewDataset(train, pre, self.augmentation)}
        for name in ("val", "test"):
            data = getattr(splits, name)
            if data is not None:
                self.datasets[name] = ViewDataset(data, pre, None)
        self.identity = {**(identity or {}), **self._identity()}
        self.caches: dict[str, FeatureCache] = {}
        self.cache_views = 0
        self._given_caches = caches  # features another trainer extracted from the same splits (bench sweeps)
        self.notes: list[str] = [self.augmentation_note]
        self.probe: list[dict] | None = None  # the linear-probe fits, once fit() has run them

    # -- setup ------------------------------------------------------------------------------------

    def _identity(self) -> dict:
        s = self.settings
        return {
            "method": s.method, "tasks": [[t.name, list(t.labels)] for t in self.splits.train.tasks],
            "backbone_fingerprint": self.backbone.fingerprint(),
            "train_data": self.splits.train.fingerprint(),
            "val_data": self.splits.val.fingerprint() if self.splits.val is not None else None,
            "epochs": s.epochs, "batch_size": s.batch_size, "lr": self.settings.learning_rate,
            "weight_decay": s.weight_decay, "warmup_epochs": s.warmup, "seed": s.seed,
            "augmentation": self.augmentation.to_json() if self.augmentation.enabled else None,
            "head_init": s.head_init if self.features else None,
            "feature_cache": s.feature_cache, "cache_views": s.cache_views if s.feature_cache else None,
            "world_size": self.dist.world_size,
        }

    def _layout(self) -> CacheLayout:
        positions = self.model.positions()
        return CacheLayout(self.model.layers, (positions.start, positions.stop), self.backbone.embed_dim,
                           self.settings.cache_dtype)

    def build_caches(self) -> float:
        """Extract the features of every split once; returns the seconds it took."""
        s = self.settings
        layout = self._layout()
        if self._given_caches:
            return self._adopt_caches(layout)
        per_image = layout.bytes_per_image
        eval_bytes = sum(len(self.datasets[k]) for k in ("val", "test") if k in self.datasets) * per_image
        train_bytes = len(self.datasets["train"]) * per_image
        max_bytes = int(s.cache_max_gb * 1024**3)
        views = plan_views(s.cache_views, self.augmentation.enabled, train_bytes, eval_bytes, max_bytes)
        if views == 0:
            need = (train_bytes + eval_bytes) / 1024**3
            raise ConfigError(
                f"the feature cache needs {need:.2f} GB for one view of the {len(self.datasets['train'])} training "
                f"images plus the validation/test images ({len(layout.layers)} layers x {layout.num_tokens} "
                f"tokens x {layout.embed_dim} dims, {layout.dtype}), over --cache-max-gb {s.cache_max_gb}; "
                "raise --cache-max-gb, use --cache-dtype float16, or train without --feature-cache"
            )
        wanted = s.cache_views if self.augmentation.enabled else 1
        if views < wanted:
            note = (f"feature cache: only {views} of the {wanted} requested views fit in --cache-max-gb "
                    f"{s.cache_max_gb}; epochs cycle over {views}")
            log.warning(note)
            self.notes.append(note)
        if not self.augmentation.enabled and s.cache_views > 1:
            self.notes.append("feature cache: one view extracted, there is no augmentation")
        self.cache_views = views
        start = time.perf_counter()
        common = dict(batch_size=self.eval_batch_size, device=self.device, dist=self.dist, workers=s.workers,
                      directory=s.cache_dir, progress=s.progress)
        aug = self.augmentation.to_json() if self.augmentation.enabled else None
        for split, dataset in self.datasets.items():
            data = getattr(self.splits, split)
            view_ids = list(range(views)) if split == "train" and self.augmentation.enabled else [None]
            key = cache_key(self.backbone, data.fingerprint(), layout, aug if split == "train" else None, split)
            self.caches[split] = build_feature_cache(self.backbone, dataset, layout, view_ids, key=key,
                                                     desc=f"extracting {split}", **common)
        return time.perf_counter() - start

    @contextmanager
    def _thread_limit(self):
        """One intra-op thread while training small heads from a CPU cache.

        Class-token heads step on [batch, 1, D] tensors: thousands of tiny ops per step, where extra
        threads only add synchronisation (measured: 10x slower steps with 2 threads on a busy 2-core
        machine, no gain on an idle one). Mean-pooled heads or on-the-fly backbone passes keep every thread.
        """
        small = (self.caches and self.device.type == "cpu"
                 and self._layout().num_tokens * self.settings.batch_size <= 1024)
        if not small:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _adopt_caches(self, layout: CacheLayout) -> float:
        problems = []
        for split, dataset in self.datasets.items():
            cache = self._given_caches.get(split)
            if cache is None or cache.num_images != len(dataset):
                problems.append(f"the given feature cache has no {split} features for {len(dataset)} images")
            elif cache.layout.positions != layout.positions or not set(layout.layers) <= set(cache.layout.layers):
                problems.append(f"the given {split} cache holds layers {cache.layout.layers} at tokens "
                                f"{cache.layout.positions}; this model reads {layout.layers} at {layout.positions}")
        if problems:
            raise ConfigError(problems)
        self.caches = dict(self._given_caches)
        train_views = self.caches["train"].views
        self.cache_views = len(train_views)
        if self.augmentation.enabled != (train_views != [None]):
            raise ConfigError("the given training cache's views do not match this run's augmentation setting")
        return 0.0

    @property
    def eval_batch_size(self) -> int:
        return self.settings.eval_batch_size or max(64, 2 * self.settings.batch_size)

    def view_for_epoch(self, epoch: int) -> int | None:
        if not self.augmentation.enabled:
            return None
        if self.caches:
            return epoch % self.cache_views
        return epoch

    # -- batches ------------------------------------------------------------------------------------

    def _inputs(self, split: str, indices: torch.Tensor, view, images: torch.Tensor | None = None):
        """What the model reads for these images: per-layer tokens (feature heads) or pixels."""
        if not self.features:
            return images.to(self.device, non_blocking=True)
        if split in self.caches:
            return self.caches[split].get(indices, view, self.device, layers=self.model.layers)
        if images is None:
            raise RuntimeError("on-the-fly features need the images")
        feats = self.backbone.forward_features(images.to(self.device, non_blocking=True))
        return select_tokens(feats, self.model.layers, self.model.positions())

    def _batches(self, split: str, indices: list[int], view, batch_size: int):
        """Yields (indices tensor, model inputs) for `indices` in order."""
        if split in self.caches:
            for i in range(0, len(indices), batch_size):
                idx = torch.as_tensor(indices[i:i + batch_size])
                yield idx, self._inputs(split, idx, view)
            return
        dataset = self.datasets[split]
        dataset.view = view
        subset = torch.utils.data.Subset(dataset, indices)
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False,
                                             num_workers=self.settings.workers,
                                             pin_memory=self.device.type == "cuda")
        for images, idx in loader:
            yield idx, self._inputs(split, idx, view, images)
        dataset.view = None

    def _losses(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {task: F.cross_entropy(logits[task], targets[task]) for task in self.tasks}

    def _targets(self, split: str, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {task: self.targets[split][task][idx].to(self.device) for task in self.tasks}

    @torch.no_grad()
    def evaluate(self, split: str, module: nn.Module | None = None) -> dict[str, dict]:
        """Loss and accuracy on the whole images of a split (what serving sees); summed over ranks."""
        module = module or self.model
        was_training = module.training
        module.eval()
        stats = _Stats(self.tasks)
        indices = list(range(self.dist.rank, len(self.datasets[split]), self.dist.world_size))
        for idx, inputs in self._batches(split, indices, None, self.eval_batch_size):
            logits = module(inputs)
            targets = self._targets(split, idx)
            stats.add(logits, targets, self._losses(logits, targets))
        module.train(was_training)
        return stats.result(self.dist)

    # -- head initialisation ------------------------------------------------------------------------

    @torch.no_grad()
    def _pooled(self, split: str, view) -> dict[str, torch.Tensor]:
        """Every head's Linear input for every image of `split` in `view`: {task: [N, D] float64 on the CPU}."""
        n = len(self.datasets[split])
        out = {task: torch.zeros(n, self.backbone.embed_dim, dtype=torch.float64, device=self.device)
               for task in self.tasks}
        was_training = self.model.training
        self.model.eval()
        indices = list(range(self.dist.rank, n, self.dist.world_size))
        for idx, inputs in self._batches(split, indices, view, self.eval_batch_size):
            for task, pooled in self.model.pooled(inputs).items():
                out[task][idx.to(self.device)] = pooled.to(torch.float64)
        self.model.train(was_training)
        for tensor in out.values():
            self.dist.all_reduce_sum(tensor)  # disjoint shards, zeros elsewhere: the sum holds every image
        return {task: tensor.cpu() for task, tensor in out.items()}

    @torch.no_grad()
    def probe_heads(self) -> list[dict]:
        """Set every feature head's Linear layer to a linear probe of its initial features (training.probe).

        The training images are read in epoch 0's view; the L2 strength is chosen on the validation split.
        Deterministic, and identical on every rank (the features are gathered before the fit).
        """
        train = self._pooled("train", self.view_for_epoch(0))
        val = self._pooled("val", None) if "val" in self.datasets else None
        fits = []
        for task, head in zip(self.model.task_names, self.model.heads):
            fit = fit_linear_probe(train[task], self.targets["train"][task], head.head.out_features,
                                   val_x=None if val is None else val[task],
                                   val_y=None if val is None else self.targets["val"][task])
            head.head.weight.copy_(fit.weight.to(head.head.weight.device))
            head.head.bias.copy_(fit.bias.to(head.head.bias.device))
            fits.append({"task": task, "l2": fit.l2, "train_accuracy": fit.train_accuracy,
                         "val_accuracy": fit.val_accuracy, "candidates": fit.candidates})
        if len(fits) == 1:
            f = fits[0]
            val_text = f", val {f['val_accuracy']:.4f}" if f["val_accuracy"] is not None else ""
            how = "chosen on the validation split" if val is not None else "default, no validation split"
            self.notes.append(f"head init: linear probe (L2 {f['l2']:g}, {how}): train {f['train_accuracy']:.4f}"
                              f"{val_text} before fine-tuning")
        else:
            self.notes.append(f"head init: a linear probe per task ({len(fits)} tasks; L2 chosen on the validation "
                              "split)" if val is not None else f"head init: a linear probe per task ({len(fits)} tasks)")
        return fits

    # -- training -------------------------------------------------------------------------------------

    def fit(self, *, stop_after_epoch: int | None = None) -> TrainResult:
        """Train all epochs (or stop after `stop_after_epoch` completed epochs, as an interruption would)."""
        s, dist = self.settings, self.dist
        torch.manual_seed(s.seed)
        start = time.perf_counter()
        extraction = self.build_caches() if (s.feature_cache and self.features) else 0.0
        if dist.is_main:
            log.info("%s", self.augmentation_note)
        if self.features and s.head_init == "probe" and not s.resume:  # a resumed run restores its head
            self.probe = self.probe_heads()
        train_set = self.datasets["train"]
        sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=dist.world_size, rank=dist.rank,
                                                      shuffle=True, seed=s.seed, drop_last=False)
        steps_per_epoch = math.ceil(len(sampler) / s.batch_size)
        total = steps_per_epoch * s.epochs
        warmup = int(round(s.warmup * steps_per_epoch))
        params = trainable_parameters(self.model)
        if not params:
            raise ConfigError("this model has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total, warmup))
        module = self.model
        if dist.active:
            module = DistributedDataParallel(self.model, device_ids=[self.device.index]
                                             if self.device.type == "cuda" else None)
        history: list[dict] = []
        first_epoch = 0
        if s.resume:
            state, tensors = load_checkpoint(s.resume)
            restore(state, tensors, model=self.model, optimizer=optimizer, scheduler=scheduler,
                    identity=self.identity)
            first_epoch, history = int(state["epoch"]), list(state["history"])
            if dist.is_main:
                log.info("resumed from %s after epoch %d of %d", s.resume, first_epoch, s.epochs)
        with self._thread_limit():
            stopped = False
            for epoch in range(first_epoch, s.epochs):
                if stop_after_epoch is not None and epoch >= stop_after_epoch:
                    stopped = True
                    break
                epoch_start = time.perf_counter()
                sampler.set_epoch(epoch)
                order = list(sampler)
                view = self.view_for_epoch(epoch)
                module.train()
                stats = _Stats(self.tasks)
                bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{s.epochs}", unit="step",
                           disable=not (s.progress and dist.is_main), leave=False)
                for idx, inputs in self._batches("train", order, view, s.batch_size):
                    targets = self._targets("train", idx)
                    logits = module(inputs)
                    losses = self._losses(logits, targets)
                    loss = sum(losses.values())  # one head per task, summed losses
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    stats.add({k: v.detach() for k, v in logits.items()}, targets, {k: v.item() for k, v in losses.items()})
                    running = stats.values[:, 1].sum() / max(1.0, float(stats.values[:, 2].sum()))
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{float(running):.3f}")
                    bar.update(1)
                bar.close()
                train_metrics = stats.result(dist)
                val_metrics = self.evaluate("val") if "val" in self.datasets else None
                record = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "train": train_metrics,
                          "val": val_metrics, "seconds": round(time.perf_counter() - epoch_start, 3)}
                history.append(record)
                if dist.is_main and s.log_epochs:
                    self._log_epoch(record)
                if dist.is_main and s.checkpoint_dir:
                    save_checkpoint(s.checkpoint_dir, model_state=trainable_state(self.model), optimizer=optimizer,
                                    scheduler=scheduler, epoch=epoch + 1, global_step=(epoch + 1) * steps_per_epoch,
                                    history=history, identity=self.identity)
                dist.barrier()
            test_metrics = self.evaluate("test") if ("test" in self.datasets and not stopped) else None
        metrics = self._final_metrics(history, test_metrics)
        cache_info = None
        if self.caches:
            cache_info = {"views": self.cache_views, "bytes": sum(c.nbytes for c in self.caches.values()),
                          "layout": self._layout().to_json(), "directory": s.cache_dir}

        return TrainResult(tasks=self.tasks, metrics=metrics, history=history, epochs_completed=len(history),
                           seconds=time.perf_counter() - start, extraction_seconds=extraction, cache=cache_info,
                           trainable_params=count_trainable(self.model), stopped_early=stopped, notes=self.notes,
                           recipe=self._recipe())

    def _recipe(self) -> dict:
        aug = self.augmentation
        used = [name for name, on in (("crop", aug.crop), ("flip", aug.flip)) if on]
        out = {"augment_mode": self.settings.augment, "augmentation": "+".join(used) or "none",
               "head_init": self.settings.head_init if self.features else "random"}
        if aug.crop:
            out["crop_scale"] = aug.scale[0]
        if self.probe:
            out["probe_l2"] = {f["task"]: f["l2"] for f in self.probe}
        return out

    def _final_metrics(self, history: list[dict], test: dict | None) -> dict[str, dict]:
        out = {}
        last = history[-1] if history else None
        for task in self.tasks:
            m: dict = {}
            if last is not None:
                m["train_accuracy"] = last["train"][task]["accuracy"]
                m["train_loss"] = last["train"][task]["loss"]
                if last["val"] is not None:
                    m["val_accuracy"] = last["val"][task]["accuracy"]
                    m["val_loss"] = last["val"][task]["loss"]
            if test is not None:
                m["test_accuracy"] = test[task]["accuracy"]
                m["test_loss"] = test[task]["loss"]
            out[task] = m
        return out

    def _log_epoch(self, record: dict) -> None:
        parts = [f"epoch {record['epoch']}/{self.settings.epochs}"]
        for task in self.tasks[:4]:
            tr = record["train"][task]
            text = f"{task}: train loss {tr['loss']:.4f} acc {tr['accuracy']:.4f}"
            if record["val"] is not None:
                text += f", val acc {record['val'][task]['accuracy']:.4f}"
            parts.append(text)
        if len(self.tasks) > 4:
            parts.append(f"(+{len(self.tasks) - 4} tasks)")
        log.info(" | ".join(parts) + f" ({record['seconds']:.1f} s)")


def majority_rate(data: ImageSet, task: int = 0) -> float:
    """Chance level: the share of the most frequent class (what always answering that class scores)."""
    counts = np.bincount(data.targets[:, task], minlength=data.tasks[task].num_classes)
    return float(counts.max() / max(1, counts.sum()))
