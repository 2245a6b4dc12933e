"""The default recipe: augmentation chosen by resolution and label safety, the linear-probe head init."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from restune.cli import main
from tests.training.conftest import MICRO, write_png
from training import demo_tasks
from training.augment import choose_augmentation
from training.data import ImageSet, TaskInfo, make_splits, scan_folder
from training.methods import MethodSpec, build_model
from training.probe import DEFAULT_PROBE_L2, fit_linear_probe
from training.train_config import LOW_RES_SIDE, NOT_FLAGS, TrainSettings
from training.trainer import Trainer


def _images(side: int, n: int = 6, *, flip: bool = True, crop: bool = True) -> ImageSet:
    task = TaskInfo(name="t", labels=("a", "b"), flip=flip, crop=crop)
    return ImageSet(name="t", tasks=(task,), targets=np.arange(n).reshape(-1, 1) % 2,
                    item_hashes=[str(i) for i in range(n)], arrays=np.zeros((n, side, side, 3), np.uint8))


def _used(aug) -> tuple[bool, bool]:
    return aug.crop, aug.flip


@pytest.mark.parametrize("side, expected", [(8, (False, False)), (LOW_RES_SIDE - 1, (False, False)),
                                            (LOW_RES_SIDE, (True, True)), (224, (True, True))])
def test_auto_augments_only_images_that_are_not_low_resolution(side, expected):
    aug, why = choose_augmentation("auto", _images(side), crop_scale=0.35, seed=0)
    assert _used(aug) == expected
    assert (f"{side} px" in why) == (expected == (False, False))  # the note says why nothing was used
    # on/off ignore the resolution
    assert _used(choose_augmentation("on", _images(side), crop_scale=0.35, seed=0)[0]) == (True, True)
    assert _used(choose_augmentation("off", _images(side), crop_scale=0.35, seed=0)[0]) == (False, False)


def test_every_mode_keeps_labels_true():
    # large images whose task forbids a flip: auto and on crop but never flip, and the other way round
    assert _used(choose_augmentation("auto", _images(128, flip=False), crop_scale=0.35, seed=0)[0]) == (True, False)
    assert _used(choose_augmentation("on", _images(128, crop=False), crop_scale=0.35, seed=0)[0]) == (False, True)
    # built-in tasks: a mirrored digit is another digit; a crop would move a sprite's position bin
    digits = demo_tasks.load_task("digits", "train", size=4)
    aug, _ = choose_augmentation("on", digits, crop_scale=0.35, seed=0)
    assert _used(aug) == (True, False) and aug.scale[0] == 0.6  # the task's own smallest label-safe crop
    assert _used(choose_augmentation("auto", digits, crop_scale=0.35, seed=0)[0]) == (False, False)  # 8 px
    sprites_x = demo_tasks.load_task("sprites_x", "train", size=4)
    assert _used(choose_augmentation("on", sprites_x, crop_scale=0.35, seed=0)[0]) == (False, False)
    with pytest.raises(ValueError, match="unknown augmentation mode"):
        choose_augmentation("sometimes", digits, crop_scale=0.35, seed=0)


def test_source_side_is_the_median_shorter_side_from_the_file_headers(tmp_path):
    for i, side in enumerate([16, 16, 40, 200, 300]):
        write_png(tmp_path / "data" / ("a" if i % 2 else "b") / f"{i}.png", seed=i, size=side)
    data = scan_folder(tmp_path / "data")
    assert data.source_side() == 40
    assert _images(12).source_side() == 12


def test_linear_probe_solves_badly_scaled_features_and_folds_its_standardisation():
    # Like frozen random-ViT features: a large shared offset, a small spread between images, one constant column.
    rng = np.random.default_rng(0)
    n, d, classes = 400, 12, 3
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d))
    spread = centres[y] + 0.3 * rng.normal(size=(n, d))
    x = torch.tensor(5.0 + 0.02 * spread)
    x[:, 0] = 7.0
    y = torch.tensor(y)
    fit = fit_linear_probe(x[:300], y[:300], classes, val_x=x[300:], val_y=y[300:])
    assert torch.isfinite(fit.weight).all() and torch.isfinite(fit.bias).all()
    logits = x.float() @ fit.weight.t() + fit.bias
    assert float((logits.argmax(1) == y).double().mean()) > 0.95
    assert fit.train_accuracy > 0.95 and fit.val_accuracy > 0.9
    # the chosen L2 is the candidate with the best validation accuracy (then loss)
    best = max(fit.candidates, key=lambda c: (c["val_accuracy"], -c["val_loss"]))
    assert fit.l2 == best["l2"] and len(fit.candidates) > 1
    # no validation split: one fit at the default strength
    alone = fit_linear_probe(x[:300], y[:300], classes)
    assert alone.l2 == DEFAULT_PROBE_L2 and [c["l2"] for c in alone.candidates] == [DEFAULT_PROBE_L2]


@pytest.mark.parametrize("method", ["bypass", "linear"])
def test_probe_head_init_is_what_the_model_then_computes(micro_backbone, image_folder, quick_settings, method):
    splits = make_splits(scan_folder(image_folder), val_fraction=0.25, seed=0)
    model = build_model(MethodSpec(method=method, dim=4), micro_backbone, [("pets", 3)], seed=0)
    before = model.head("pets").head.weight.detach().clone()
    trainer = Trainer(micro_backbone, splits, model, quick_settings(method=method, feature_cache=True))
    assert not trainer.augmentation.enabled  # 20 px images: auto uses none
    trainer.build_caches()
    (fit,) = trainer.probe_heads()
    assert not torch.equal(model.head("pets").head.weight, before)
    # the folded head, run by the model on whole images, scores what the probe reported
    assert trainer.evaluate("train")["pets"]["accuracy"] == pytest.approx(fit["train_accuracy"], abs=1e-9)
    assert trainer.evaluate("val")["pets"]["accuracy"] == pytest.approx(fit["val_accuracy"], abs=1e-9)


def test_random_head_init_and_explicit_augmentation_are_recorded(micro_backbone, image_folder, quick_settings):
    splits = make_splits(scan_folder(image_folder), val_fraction=0.25, seed=0)
    model = build_model(MethodSpec(method="bypass", dim=4), micro_backbone, [("pets", 3)], seed=0)
    result = Trainer(micro_backbone, splits, model, quick_settings(head_init="random", augment="on")).fit()
    assert result.recipe == {"augment_mode": "on", "augmentation": "crop+flip", "head_init": "random",
                             "crop_scale": 0.35}
    assert not any(n.startswith("head init") for n in result.notes)
    model = build_model(MethodSpec(method="bypass", dim=4), micro_backbone, [("pets", 3)], seed=0)
    result = Trainer(micro_backbone, splits, model, quick_settings()).fit()
    assert result.recipe["augmentation"] == "none" and result.recipe["head_init"] == "probe"
    assert any(n.startswith("head init: linear probe") for n in result.notes)


def test_every_setting_is_a_flag_defined_once(capsys):
    """train classify's flags are TrainSettings' fields: a flag left out leaves the setting's own default."""
    from dataclasses import fields

    from restune.cli import build_parser
    from restuning.options import given_options

    parser = build_parser()
    args = parser.parse_args(["train", "classify", "--data", "d"])
    assert given_options(args, TrainSettings, exclude=NOT_FLAGS) == {}  # nothing given: TrainSettings() decides every default
    flags = {f.name: "--" + f.name.replace("_", "-") for f in fields(TrainSettings) if f.name not in NOT_FLAGS}
    assert set(flags) >= {"augment", "head_init", "lr", "weight_decay", "epochs", "feature_cache"}
    argv = ["train", "classify", "--data", "d", "--augment", "on", "--head-init", "random", "--lr", "0.02",
            "--weight-decay", "0", "--epochs", "3", "--feature-cache", "--method", "linear"]
    given = given_options(parser.parse_args(argv), TrainSettings, exclude=NOT_FLAGS)
    assert given == {"augment": "on", "head_init": "random", "lr": 0.02, "weight_decay": 0.0, "epochs": 3,
                     "feature_cache": True, "method": "linear"}
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "classify", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for flag in flags.values():
        assert flag in help_text
    assert "(default auto)" in help_text and "(default probe)" in help_text


def test_cli_defaults_land_in_the_artifact_and_flags_are_checked(image_folder, tmp_path, capsys):
    import json

    base = ["train", "classify", "--data", str(image_folder), "--backbone", MICRO, "--weights", "random:0",
            "--epochs", "1", "--batch-size", "8", "--dim", "4", "--no-progress", "--no-checkpoints", "--json"]
    assert main([*base, "--out", str(tmp_path / "a.safetensors")]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["augmentation"] == "none" and metrics["head_init"] == "probe"
    assert main([*base, "--out", str(tmp_path / "b.safetensors"), "--augment", "on", "--head-init", "random"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["augmentation"] == "crop+flip" and metrics["head_init"] == "random"
    code = main([*base, "--no-augment", "--augment", "on"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--no-augment contradicts --augment on" in err and len(err.splitlines()) == 1
