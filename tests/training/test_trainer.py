"""The trainer: every method, the feature cache, multi-task training, checkpoint/resume determinism."""
from __future__ import annotations

import math

import pytest
import torch

from restuning.errors import ConfigError
from restuning.preprocess import ImagePreprocessor
from training import demo_tasks
from training.augment import Augmentation, ViewDataset
from training.data import make_splits, scan_folder
from training.distributed import DistInfo
from training.feature_cache import CacheLayout, build_feature_cache, select_tokens
from training.methods import FeatureHeads, MethodSpec, build_model, trainable_state
from training.trainer import Trainer, cosine_with_warmup


@pytest.fixture
def folder_splits(image_folder):
    return make_splits(scan_folder(image_folder), val_fraction=0.25, seed=0)


def _fit(backbone, splits, settings, spec=None, **kwargs):
    spec = spec or MethodSpec(method=settings.method, dim=4)
    tasks = [(t.name, t.num_classes) for t in splits.train.tasks]
    model = build_model(spec, backbone, tasks, seed=settings.seed)
    trainer = Trainer(backbone, splits, model, settings, **kwargs)
    return trainer, trainer.fit()


@pytest.mark.parametrize("method", ["bypass", "linear", "full", "restuning"])
def test_one_epoch_of_each_method_trains_only_its_parameters(micro_backbone, folder_splits, quick_settings, method):
    settings = quick_settings(method=method, lr=0.01)
    spec = MethodSpec(method=method, dim=4)
    model = build_model(spec, micro_backbone, [("pets", 3)], seed=0)
    before = {k: v.clone() for k, v in trainable_state(model).items()}
    backbone_before = {k: v.clone() for k, v in micro_backbone.state_dict().items()}
    result = Trainer(micro_backbone, folder_splits, model, settings).fit()
    m = result.metrics["pets"]
    assert result.epochs_completed == 1 and 0 <= m["train_accuracy"] <= 1 and 0 <= m["val_accuracy"] <= 1
    assert math.isfinite(m["train_loss"]) and m["train_loss"] > 0
    after = trainable_state(model)
    assert all(not torch.equal(before[k], after[k]) for k in ("heads.0.head.weight", "model.head.weight")
               if k in before)  # the head moved
    for k, v in micro_backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k])  # the shared backbone never changes, whatever the method
    if method == "linear":
        assert set(before) == {"heads.0.head.weight", "heads.0.head.bias"}
    if method == "full":
        assert result.trainable_params > 30_000  # the whole micro ViT


def test_linear_probe_is_exactly_a_head_on_the_pooled_final_features(micro_backbone):
    model = build_model(MethodSpec(method="linear"), micro_backbone, [("t", 3)], seed=0)
    head = model.head("t")
    images = torch.randn(4, 3, 32, 32)
    feats = micro_backbone.forward_features(images)
    tokens = select_tokens(feats, model.layers, model.positions())
    assert model.layers == (0, micro_backbone.depth)  # x_0 and x_L only: what a cache stores for it
    expected = head.head(micro_backbone.pool(feats[-1][:, model.positions()]))
    assert torch.equal(model(tokens)["t"], expected)


def test_feature_cache_equals_on_the_fly_features_for_the_same_views(micro_backbone, image_folder, tmp_path):
    data = scan_folder(image_folder)
    dataset = ViewDataset(data, ImagePreprocessor(micro_backbone.info), Augmentation(seed=5))
    layers, positions = (0, 1, 3), micro_backbone.token_positions("token")
    layout = CacheLayout(layers, (positions.start, positions.stop), micro_backbone.embed_dim)
    for directory in (None, tmp_path / "cache"):
        cache = build_feature_cache(micro_backbone, dataset, layout, [0, 1, None], batch_size=64, device="cpu",
                                    dist=DistInfo(), directory=directory, key="k1", progress=False)
        for view in (0, 1, None):
            dataset.view = view
            images = torch.stack([dataset[i][0] for i in range(len(data))])
            fresh = select_tokens(micro_backbone.forward_features(images), layers, positions)
            got = cache.get(list(range(len(data))), view)
            for layer in layers:
                assert torch.equal(got[layer], fresh[layer]), (directory, view, layer)
            assert got[2] is None
        dataset.view = None
    # the views differ from each other (augmentation really happened) and were reused from disk
    assert not torch.equal(cache.get([0], 0)[1], cache.get([0], 1)[1])
    assert (tmp_path / "cache" / "k1" / "manifest.json").is_file()


def test_training_from_the_cache_matches_on_the_fly_training(micro_backbone, folder_splits, quick_settings):
    common = dict(method="bypass", epochs=2, cache_views=2, lr=0.01, augment="on")  # 20 px images: auto uses none
    _, cached = _fit(micro_backbone, folder_splits, quick_settings(feature_cache=True, **common))
    _, fly = _fit(micro_backbone, folder_splits, quick_settings(feature_cache=False, **common))
    a, b = cached.metrics["pets"], fly.metrics["pets"]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
    assert cached.cache["views"] == 2 and fly.cache is None


def test_multi_task_training_from_one_cached_pass(micro_backbone, quick_settings, monkeypatch):
    pool = demo_tasks.load_image_set("sprites", "train", size=24)
    test = demo_tasks.load_image_set("sprites", "test", size=8)
    splits = make_splits(pool, val_fraction=0.25, seed=0, test=test)
    passes = []
    original = micro_backbone.forward_features
    monkeypatch.setattr(micro_backbone, "forward_features", lambda x: passes.append(len(x)) or original(x))
    settings = quick_settings(epochs=3, feature_cache=True)
    trainer, result = _fit(micro_backbone, splits, settings)
    assert isinstance(trainer.model, FeatureHeads) and set(trainer.model.task_names) == set(demo_tasks.tasks_of("sprites"))
    assert sum(passes) == len(pool) + len(test)  # one backbone pass per image for all 5 tasks and 3 epochs
    for task in demo_tasks.tasks_of("sprites"):
        assert 0 <= result.metrics[task]["test_accuracy"] <= 1
    assert result.cache["layout"]["positions"] == [0, 1]  # class-token heads cache one token per layer


def test_cache_budget_is_enforced_before_extraction(micro_backbone, folder_splits, quick_settings):
    with pytest.raises(ConfigError, match="raise --cache-max-gb"):
        _fit(micro_backbone, folder_splits, quick_settings(feature_cache=True, cache_max_gb=1e-9))
    # room for one training view: fewer views, said so
    per_image = (micro_backbone.depth + 1) * micro_backbone.embed_dim * 4
    gb = (len(folder_splits.train) * 1.5 + len(folder_splits.val)) * per_image / 1024**3
    trainer, result = _fit(micro_backbone, folder_splits, quick_settings(feature_cache=True, cache_max_gb=gb,
                                                                          augment="on"))
    assert trainer.cache_views == 1 and any("only 1 of the 4" in n for n in result.notes)


def test_settings_problems_are_collected_and_named(micro_backbone, folder_splits, quick_settings):
    settings = quick_settings(method="full", epochs=0, lr=-1.0, feature_cache=True, cache_dtype="int8")
    with pytest.raises(ConfigError) as info:
        _fit(micro_backbone, folder_splits, settings, spec=MethodSpec(method="full"))
    text = str(info.value)
    for fragment in ("epochs must be a positive integer", "lr must be", "--feature-cache needs a frozen backbone",
                     "unknown cache dtype 'int8'"):
        assert fragment in text


def test_resume_after_interruption_equals_an_uninterrupted_run(micro_backbone, folder_splits, quick_settings,
                                                             tmp_path):
    common = dict(method="bypass", epochs=3, lr=0.02, seed=7, augment="on")  # augmented views on the fly, epochs 0-2
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    trainer_a, a = _fit(micro_backbone, folder_splits, quick_settings(checkpoint_dir=str(full_dir), **common))
    spec = MethodSpec(method="bypass", dim=4)
    model_b = build_model(spec, micro_backbone, [("pets", 3)], seed=7)
    first = Trainer(micro_backbone, folder_splits, model_b, quick_settings(checkpoint_dir=str(part_dir), **common))
    assert first.fit(stop_after_epoch=1).stopped_early
    model_c = build_model(spec, micro_backbone, [("pets", 3)], seed=99)  # a fresh run, other init: all restored
    resumed = Trainer(micro_backbone, folder_splits, model_c,
                      quick_settings(checkpoint_dir=str(part_dir), resume=str(part_dir), **common)).fit()
    final_a, final_c = trainable_state(trainer_a.model), trainable_state(model_c)
    assert set(final_a) == set(final_c)
    for k in final_a:
        assert torch.equal(final_a[k], final_c[k]), k
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.metrics == a.metrics


def test_resume_refuses_a_different_run(micro_backbone, folder_splits, quick_settings, tmp_path):
    _fit(micro_backbone, folder_splits, quick_settings(checkpoint_dir=str(tmp_path), lr=0.01))
    from training.errors import CheckpointError

    with pytest.raises(CheckpointError, match="lr: checkpoint has 0.01, this run has 0.02"):
        _fit(micro_backbone, folder_splits, quick_settings(resume=str(tmp_path), lr=0.02))
    with pytest.raises(CheckpointError, match="no checkpoint there"):
        _fit(micro_backbone, folder_splits, quick_settings(resume=str(tmp_path / "nothing")))


def test_cosine_schedule_warms_up_then_decays_to_zero():
    f = cosine_with_warmup(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
