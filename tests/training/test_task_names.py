"""Every valid tuner name works everywhere a task name is a key: names that are attributes of nn.Module
(`train`, `eval`, `to`, …) or of the containers heads sit in, and names with '.' and '-'.

A ModuleDict keyed by task once refused `train` ("attribute 'train' already exists") and would refuse
any name with a '.'; these tests feed every such name through each keyed container.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tuner_store.artifact import is_valid_name


def _clashing_names() -> list[str]:
    """Public attribute names of nn.Module (class and instance) and ModuleList that are valid tuner names."""
    attrs = set(dir(nn.Module)) | set(vars(nn.Module())) | set(dir(nn.ModuleList)) | set(dir(dict))
    names = sorted(n for n in attrs if not n.startswith("_") and is_valid_name(n))
    return names + ["a.b", "my-task", "v1.2-final", "heads", "0", "task.0"]


NAMES = _clashing_names()


def test_the_name_list_covers_the_reported_cases():
    for name in ("train", "eval", "forward", "to", "cuda", "float", "half", "type", "apply", "parameters",
                 "state_dict", "zero_grad", "training", "a.b", "my-task"):
        assert name in NAMES and is_valid_name(name)


def _image_set(names: list[str], n: int = 16):
    """One small in-memory image set with one 2-class task per name (labels vary per column)."""
    from training.data import ImageSet, TaskInfo

    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 255, size=(n, 20, 20, 3), dtype=np.uint8)
    targets = np.stack([(np.arange(n) + j) % 2 for j in range(len(names))], axis=1).astype(np.int64)
    tasks = tuple(TaskInfo(name=t, labels=("no", "yes"), flip=False, crop=False) for t in names)
    return ImageSet(name="names", tasks=tasks, targets=targets, item_hashes=[f"{i:064x}" for i in range(n)],
                    arrays=arrays)


def test_feature_heads_keep_every_name(micro_backbone):
    from training.feature_cache import select_tokens
    from training.methods import MethodSpec, build_model

    model = build_model(MethodSpec(dim=2), micro_backbone, [(n, 2) for n in NAMES], seed=0)
    assert model.task_names == tuple(NAMES)
    feats = micro_backbone.forward_features(torch.randn(2, 3, 32, 32))
    logits = model(select_tokens(feats, model.layers, model.positions()))
    assert list(logits) == NAMES and all(v.shape == (2, 2) for v in logits.values())
    for i, name in enumerate(NAMES):  # each name reaches its own head, not an nn.Module method
        assert model.head(name) is model.heads[i]
        assert torch.equal(logits[name], model.head(name)(feats, micro_backbone))
    assert callable(model.train) and model.train(False) is model  # the module's own methods are untouched


def test_multi_task_training_cache_checkpoint_and_resume(micro_backbone, quick_settings, tmp_path):
    from training.data import make_splits
    from training.methods import MethodSpec, build_model, trainable_state
    from training.trainer import Trainer

    names = NAMES[:12] + ["a.b", "my-task"]
    splits = make_splits(_image_set(names), val_fraction=0.25, seed=0)
    spec = MethodSpec(dim=2)
    tasks = [(n, 2) for n in names]
    common = dict(epochs=2, feature_cache=True, seed=3)
    full = Trainer(micro_backbone, splits, build_model(spec, micro_backbone, tasks, seed=3),
                   quick_settings(checkpoint_dir=str(tmp_path / "a"), **common))
    done = full.fit()
    assert set(done.metrics) == set(names)
    part = Trainer(micro_backbone, splits, build_model(spec, micro_backbone, tasks, seed=3),
                   quick_settings(checkpoint_dir=str(tmp_path / "b"), **common))
    assert part.fit(stop_after_epoch=1).stopped_early
    model = build_model(spec, micro_backbone, tasks, seed=99)
    Trainer(micro_backbone, splits, model,
            quick_settings(checkpoint_dir=str(tmp_path / "b"), resume=str(tmp_path / "b"), **common)).fit()
    a, b = trainable_state(full.model), trainable_state(model)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_engine_artifact_store_and_registry_take_every_name(micro_backbone, tmp_path):
    from restuning.bypass import BypassConfig, build_bypass
    from restuning.engine import MultiTaskEngine
    from server.kinds import ServingRuntime
    from server.registry import TunerRegistry
    from tuner_store.artifact import classification_artifact, decode_artifact, encode_artifact
    from tuner_store.urls import open_store

    heads = {n: build_bypass(BypassConfig.create(micro_backbone.info, num_classes=2, dim=2),
                             micro_backbone.embed_dim, seed=i) for i, n in enumerate(NAMES)}
    engine = MultiTaskEngine(micro_backbone, heads)
    images = torch.randn(2, 3, 32, 32)
    feats = micro_backbone.forward_features(images)
    out = engine.run(feats, ["train", "eval", "a.b"])
    assert list(out) == ["train", "eval", "a.b"]
    torch.testing.assert_close(out["eval"], heads["eval"](feats, micro_backbone))

    store = open_store(f"file://{tmp_path / 'store'}")
    for name in ("train", "eval", "to", "keys", "a.b", "my-task"):
        artifact = classification_artifact(name, heads[name], ["no", "yes"], micro_backbone)
        assert decode_artifact(encode_artifact(artifact)).name == name
        assert store.put(artifact).ref == f"{name}@1"
    registry = TunerRegistry(store, ServingRuntime(micro_backbone, "cpu", torch.float32,
                                                  engine=MultiTaskEngine(micro_backbone)))
    registry.sync()
    assert sorted(registry.records("classification")) == sorted(("train", "eval", "to", "keys", "a.b", "my-task"))
    for name in ("keys", "train"):
        registry.ensure(name)
    logits = registry.runtime.engine.run(feats, ["keys", "train"])
    torch.testing.assert_close(logits["train"], heads["train"](feats, micro_backbone))


@pytest.mark.parametrize("name", ["train", "eval"])
def test_cli_trains_from_a_folder_named_like_a_module_method(tmp_path, name, capsys):
    """`--data data/train` with no --name: the folder name becomes the task name."""
    from restune.cli import main
    from tests.training.conftest import MICRO, write_png

    root = tmp_path / "data" / name
    for c, label in enumerate(["cat", "dog"]):
        for i in range(6):
            write_png(root / label / f"{i}.png", seed=10 * c + i, tint=c)
    out = tmp_path / f"{name}.safetensors"
    code = main(["train", "classify", "--data", str(root), "--backbone", MICRO, "--weights", "random:0",
                 "--epochs", "1", "--dim", "2", "--feature-cache", "--out", str(out), "--no-progress"])
    assert code == 0 and out.is_file()
    from tuner_store.artifact import read_artifact

    assert read_artifact(out).name == name
