"""Data sources (folder, CSV, built-in), unreadable images, bad-data errors, splits."""
from __future__ import annotations

import pytest

from restuning.errors import RestuneError
from tests.training.conftest import write_png
from training.data import make_splits, sanitize_name, scan_csv, scan_folder
from training.errors import DataError
from training.sources import resolve_data


def test_image_folder_classes_labels_and_ignored_files(image_folder):
    data = scan_folder(image_folder)
    assert data.tasks[0].labels == ("cat", "dog", "fox")
    assert len(data) == 24 and data.class_counts() == [8, 8, 8]
    assert not data.unreadable
    assert any("without an image extension" in n for n in data.notes)  # notes.txt was skipped and said so
    assert data.load(0).mode == "RGB"


def test_fingerprint_ignores_location_but_not_content(image_folder, tmp_path):
    before = scan_folder(image_folder).fingerprint()
    moved = tmp_path / "elsewhere"
    image_folder.rename(moved)
    assert scan_folder(moved).fingerprint() == before
    write_png(moved / "dog" / "0.png", seed=999)
    assert scan_folder(moved).fingerprint() != before


def test_csv_relative_paths_with_broken_and_missing_images_counted(csv_data):
    data = scan_csv(csv_data)
    assert len(data) == 12 and data.tasks[0].labels == ("green", "red")
    reasons = {u.path: u.reason for u in data.unreadable}
    assert set(reasons) == {"img/broken.png", "img/missing.png"}
    assert reasons["img/missing.png"] == "file not found"
    assert "decod" in reasons["img/broken.png"]
    assert "skipped 2 unreadable image(s)" in data.report()


def test_builtin_task_has_fixed_test_split():
    train, test = resolve_data("digits_parity", builtin_sizes={"train": 30, "test": 10})
    assert len(train) == 30 and len(test) == 10
    assert train.tasks[0].labels == ("even", "odd") and not train.tasks[0].flip


@pytest.mark.parametrize("case", ["empty", "single_class", "missing_dir", "no_subfolders", "all_broken"])
def test_bad_folders_raise_one_clear_error(tmp_path, case):
    root = tmp_path / "data"
    if case == "empty":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
        expected = "no image files"
    elif case == "single_class":
        for i in range(3):
            write_png(root / "only" / f"{i}.png", seed=i)
        expected = "only one class"
    elif case == "missing_dir":
        expected = "does not exist"
    elif case == "no_subfolders":
        write_png(root / "x.png", seed=0)
        expected = "no class sub-folders"
    else:
        for c in "ab":
            (root / c).mkdir(parents=True, exist_ok=True)
            (root / c / "1.png").write_bytes(b"garbage")
        expected = "none of the 2 image files could be read"
    with pytest.raises(DataError, match=expected) as info:
        resolve_data(str(root) if case != "missing_dir" else str(root / "nope/"))
    assert isinstance(info.value, RestuneError)


def test_class_without_readable_images_is_named(tmp_path):
    root = tmp_path / "data"
    for i in range(2):
        write_png(root / "good" / f"{i}.png", seed=i)
        write_png(root / "fine" / f"{i}.png", seed=10 + i)
    (root / "bad").mkdir()
    (root / "bad" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"no readable image: \['bad'\]"):
        scan_folder(root)


def test_csv_errors_name_the_columns_and_problems(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match=r"missing \['path', 'label'\], found \['file', 'class'\]"):
        scan_csv(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n,\n")
    with pytest.raises(DataError, match="no rows with both a path and a label"):
        scan_csv(empty)
    with pytest.raises(DataError, match="does not exist"):
        resolve_data(str(tmp_path / "nope.csv"))


def test_unknown_spec_lists_builtin_tasks():
    with pytest.raises(DataError, match="built-in tasks: digits, digits_parity"):
        resolve_data("no_such_thing")


def test_validation_split_is_stratified_and_deterministic(image_folder):
    pool = scan_folder(image_folder)
    a = make_splits(pool, val_fraction=0.25, seed=3)
    b = make_splits(pool, val_fraction=0.25, seed=3)
    c = make_splits(pool, val_fraction=0.25, seed=4)
    assert a.val.class_counts() == [2, 2, 2] and a.train.class_counts() == [6, 6, 6]
    assert a.val.item_hashes == b.val.item_hashes and a.val.item_hashes != c.val.item_hashes
    assert not set(a.val.item_hashes) & set(a.train.item_hashes)
    assert make_splits(pool, val_fraction=0.0, seed=0).val is None


def test_sanitize_name_follows_store_rules():
    from tuner_store.artifact import is_valid_name

    for text in ["My Pets!", "..weird..name..", "Ünïcode", "a" * 100, "___"]:
        name = sanitize_name(text)
        assert is_valid_name(name), (text, name)
    assert sanitize_name("My Pets") == "my-pets"
