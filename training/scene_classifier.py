"""The shape classifier that judges generated scenes: a restune classification tuner, trained here.

It is the project's own classification path end to end: a bypass tuner (H + V adapters, every layer, mean
pooling) on a frozen in-code ViT with random weights (`restune_vit_micro_avg`: 32×32 input, patch 8, 4 blocks),
trained by `training.trainer.Trainer` from a feature cache on procedural scenes labelled with their shape
(`training.scenes.shape_image_set`), and run by `restuning.engine.MultiTaskEngine` as the server runs it. The
quality bar of `tiny-trained` asks it to find the prompted shape in generated images; its accuracy on drawn
(not generated) scenes is the ceiling of that measure, and is reported beside it.

`styled_share` of the training scenes are restyled at random with the demo's styles (`training.style_sets`), so
that "content kept" measures shapes, not whether the classifier has seen crimson before.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from restuning.backbones import create_backbone
from restuning.engine import MultiTaskEngine
from restuning.preprocess import ImagePreprocessor
from training import scenes as scene_data
from training import style_sets
from training.data import ImageSet, make_splits
from training.methods import MethodSpec, build_model
from training.trainer import Trainer, TrainSettings
from tuner_store.artifact import classification_artifact

CLASSIFIER_BACKBONE = "restune_vit_micro_avg"
CLASSIFIER_WEIGHTS = "random:0"
CLASSIFIER_SEED = 500  # scenes 500 (train), 501 (test): never the base model's (0) or the style sets' (1000…)
TASK = scene_data.SHAPE_TASK.name


def restyled(images: ImageSet, share: float, seed: int) -> ImageSet:
    """`share` of the images restyled, each with one of the demo's styles at random (labels unchanged)."""
    if share <= 0:
        return images
    rng = np.random.default_rng([seed, 31])
    specs = list(style_sets.STYLES.values())
    arrays = images.arrays.copy()
    for i in np.flatnonzero(rng.random(len(arrays)) < share):
        arrays[i] = specs[int(rng.integers(len(specs)))].transform(arrays[i], rng)
    return ImageSet(name=images.name, tasks=images.tasks, targets=images.targets,
                    item_hashes=[hashlib.sha256(a.tobytes()).hexdigest() for a in arrays], arrays=arrays,
                    source=f"{images.source}, {share:.0%} restyled")


@dataclass
class ShapeClassifier:
    backbone: object
    head: torch.nn.Module
    metrics: dict
    seconds: float
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        self.engine = MultiTaskEngine(self.backbone, {TASK: self.head})
        self.preprocessor = ImagePreprocessor(self.backbone.info)

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Shape index (into `training.scenes.SHAPES`) of each uint8 image [N, H, W, 3]."""
        out = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self.preprocessor(im) for im in images[start:start + batch_size]])
            out.append(self.engine.classify(pixels, [TASK])[TASK].argmax(-1).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def accuracy(self, images: np.ndarray, shapes: list[str]) -> float:
        labels = np.array([scene_data.SHAPES.index(s) for s in shapes])
        return float((self.predict(images) == labels).mean()) if len(labels) else float("nan")

    def artifact(self):
        """The classifier as a restune tuner artifact (what `restune tuners push` would serve)."""
        return classification_artifact(TASK, self.head, list(scene_data.SHAPES), self.backbone,
                                       {**self.metrics, "settings": self.settings})


def train_shape_classifier(*, train_size: int = 6000, test_size: int = 600, epochs: int = 40, lr: float = 0.01,
                           styled_share: float = 0.75, dim: int = 10, seed: int = CLASSIFIER_SEED,
                           progress: bool = False) -> ShapeClassifier:
    """Train the classifier; `metrics` hold its accuracy on drawn scenes (test split, plain and per style)."""
    start = time.perf_counter()
    net = create_backbone(CLASSIFIER_BACKBONE, weights=CLASSIFIER_WEIGHTS)
    pool = restyled(scene_data.shape_image_set(train_size, seed), styled_share, seed)
    test = scene_data.shape_image_set(test_size, seed + 1)
    splits = make_splits(pool, val_fraction=0.1, seed=seed, test=test)
    spec = MethodSpec(method="bypass", pooling="avg", dim=dim)
    model = build_model(spec, net, [(TASK, len(scene_data.SHAPES))], seed=seed)
    settings = TrainSettings(method="bypass", epochs=epochs, batch_size=32, lr=lr, seed=seed, augment="off",
                             feature_cache=True, cache_views=1, progress=progress, log_epochs=False)
    result = Trainer(net, splits, model, settings).fit()
    classifier = ShapeClassifier(net, model.head(TASK).eval(), dict(result.metrics[TASK]), 0.0, {
        "backbone": CLASSIFIER_BACKBONE, "weights": CLASSIFIER_WEIGHTS, "method": f"bypass (H + V adapters, dim {dim}, "
        "every layer, mean pooling)", "train_scenes": train_size, "test_scenes": test_size, "epochs": epochs,
        "lr": lr, "styled_share": styled_share, "seed": seed})
    items = scene_data.scenes(test_size, seed + 1)
    shapes = [s.shape for s in items]
    rng = np.random.default_rng([seed, 41])
    for name, spec_ in style_sets.STYLES.items():
        styled = np.stack([spec_.transform(a, rng) for a in test.arrays])
        classifier.metrics[f"test_accuracy_{name}"] = classifier.accuracy(styled, shapes)
    classifier.metrics["test_accuracy_engine"] = classifier.accuracy(test.arrays, shapes)
    classifier.seconds = time.perf_counter() - start
    return classifier
