"""The 19-task demo suite: names, deterministic disjoint splits, label ranges, the sample image."""
from __future__ import annotations

import io

import numpy as np
import pytest

from training import demo_tasks
from training.errors import DataError


def test_nineteen_named_tasks_over_four_image_sets():
    names = demo_tasks.task_names()
    assert len(names) == 19 == len(set(names))
    assert {t.image_set for t in demo_tasks.TASKS.values()} == set(demo_tasks.IMAGE_SETS)
    assert sum(len(demo_tasks.tasks_of(s)) for s in demo_tasks.IMAGE_SETS) == 19
    from tuner_store.artifact import is_valid_name

    assert all(is_valid_name(n) for n in names)  # every task name is a valid tuner name


@pytest.mark.parametrize("image_set", list(demo_tasks.IMAGE_SETS))
def test_splits_are_deterministic_disjoint_and_labels_in_range(image_set):
    train = demo_tasks.load_image_set(image_set, "train", seed=0, size=40)
    again = demo_tasks.load_image_set(image_set, "train", seed=0, size=40)
    other_seed = demo_tasks.load_image_set(image_set, "train", seed=1, size=40)
    test = demo_tasks.load_image_set(image_set, "test", seed=0, size=20)
    assert np.array_equal(train.arrays, again.arrays) and np.array_equal(train.targets, again.targets)
    assert not np.array_equal(train.arrays, other_seed.arrays)
    assert not set(train.item_hashes) & set(test.item_hashes)  # no test image is a training image
    longer = demo_tasks.load_image_set(image_set, "train", seed=0, size=60)
    assert np.array_equal(longer.arrays[:40], train.arrays)  # a size is a prefix of the same split
    assert train.arrays.dtype == np.uint8 and len(train) == 40
    for j, task in enumerate(train.tasks):
        labels = np.concatenate([train.targets[:, j], test.targets[:, j]])
        assert labels.min() >= 0 and labels.max() < task.num_classes, task.name
        assert len(np.unique(train.targets[:, j])) >= 2, task.name  # not a constant task


def test_digits_use_all_real_scans_without_overlap():
    train = demo_tasks._digits_split("train", 0)
    test = demo_tasks._digits_split("test", 0)
    assert len(train) + len(test) == 1797 and not set(train) & set(test)
    assert 590 <= len(test) <= 605


def test_augmentation_metadata_follows_label_geometry():
    tasks = demo_tasks.TASKS
    assert not tasks["digits"].flip  # a mirrored digit is not that digit
    assert not tasks["sprites_x"].flip and not tasks["sprites_x"].crop  # flips and crops move positions
    assert tasks["sprites_y"].flip and not tasks["sprites_y"].crop
    assert not tasks["clevr_count"].crop and not tasks["norb_lighting"].flip
    for image_set in demo_tasks.IMAGE_SETS:
        data = demo_tasks.load_image_set(image_set, "test", size=2)
        assert not data.flip_ok  # every set has a task a flip would break, so shared views never flip


def test_unknown_names_are_clear_errors():
    with pytest.raises(DataError, match="choose one of digits, digits_parity"):
        demo_tasks.load_task("nope", "train")
    with pytest.raises(DataError, match="unknown split"):
        demo_tasks.load_task("digits", "validation")


def test_committed_sample_image_matches_its_generator():
    from PIL import Image

    generated = Image.open(io.BytesIO(demo_tasks.sample_image_png()))
    committed = Image.open(demo_tasks.SAMPLE_IMAGE_PATH)
    assert committed.size == (64, 64)
    assert np.array_equal(np.asarray(generated), np.asarray(committed.convert("RGB")))
