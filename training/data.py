"""Training data: an image folder, a CSV file or a built-in task, scanned once and split deterministically.

Sources (`--data SPEC`, resolved by `training.sources`):
- an ImageFolder-style directory: one sub-folder per class (`root/cat/*.jpg`, `root/dog/*.png`), searched
  recursively; the class names are the sub-folder names;
- a CSV file with a header and the columns `path,label` (other columns are ignored); relative paths
  resolve against the CSV file's directory;
- a built-in task name from the demo suite (`training.demo_tasks`, e.g. `digits`), or `builtin:NAME`
  to force one when a file of the same name exists.

Every image file is decoded once while scanning (with the same `load_image` the server uses), so an
unreadable file is found, counted and reported before training starts instead of crashing an epoch.
The decoded pixels are not kept: training decodes again per view, which keeps memory flat on big folders.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from restuning.errors import InputError
from restuning.preprocess import load_image
from training.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class TaskInfo:
    """One classification task: its class names and which augmentations keep its labels true."""

    name: str
    labels: tuple[str, ...]
    flip: bool = True  # a horizontal flip keeps the label (False for digits, left/right, orientation)
    crop: bool = True  # a random resized crop keeps the label (False for position, scale, count, distance)
    description: str = ""
    min_crop_scale: float = 0.0  # smallest crop area (fraction) that still keeps the label

    @property
    def num_classes(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Unreadable:
    path: str
    reason: str


@dataclass
class ImageSet:
    """Images with one label column per task; images are file paths or an in-memory uint8 array."""

    name: str
    tasks: tuple[TaskInfo, ...]
    targets: np.ndarray  # int64 [N, T]
    item_hashes: list[str]  # sha256 of each image's bytes: the data fingerprint survives moving the folder
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None  # uint8 [N, H, W] (grey) or [N, H, W, 3]
    unreadable: list[Unreadable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def flip_ok(self) -> bool:
        """A flip is used only when it keeps every task's label (tasks sharing images share their views)."""
        return all(t.flip for t in self.tasks)

    @property
    def crop_ok(self) -> bool:
        return all(t.crop for t in self.tasks)

    @property
    def min_crop_scale(self) -> float:
        return max((t.min_crop_scale for t in self.tasks), default=0.0)

    def load(self, index: int):
        """Image `index` as an RGB PIL image."""
        if self.arrays is not None:
            return Image.fromarray(self.arrays[index]).convert("RGB")
        path = self.paths[index]
        try:
            return load_image(path)
        except (InputError, OSError) as exc:
            raise DataError(f"{path} was readable when the data was scanned but not now: {exc}") from None

    def source_side(self, sample: int = 64) -> int:
        """Median shorter side, in pixels, of the stored images (an evenly spaced sample of at most `sample`).

        Reads only file headers: the augmentation policy needs the resolution before anything is decoded.
        """
        if len(self) == 0:
            return 0
        if self.arrays is not None:
            return int(min(self.arrays.shape[1:3]))
        picks = np.unique(np.linspace(0, len(self) - 1, num=min(sample, len(self))).round().astype(np.int64))
        sides = []
        for i in picks:
            try:
                with Image.open(self.paths[i]) as image:
                    sides.append(min(image.size))
            except OSError:
                continue  # scanned as readable, gone now: training will say so when it reaches it
        return int(np.median(sides)) if sides else 0

    def subset(self, indices) -> "ImageSet":
        indices = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            targets=self.targets[indices],
            item_hashes=[self.item_hashes[i] for i in indices],
            paths=None if self.paths is None else [self.paths[i] for i in indices],
            arrays=None if self.arrays is None else self.arrays[indices],
            unreadable=[],
            notes=[],
        )

    def select_tasks(self, names: list[str]) -> "ImageSet":
        columns = [self.task_names.index(n) for n in names]
        return replace(self, tasks=tuple(self.tasks[c] for c in columns), targets=self.targets[:, columns])

    def fingerprint(self) -> str:
        """sha256 over the class names, every image's content hash and its labels, in order (not paths)."""
        digest = hashlib.sha256()
        digest.update(json.dumps([list(t.labels) for t in self.tasks]).encode())  # not names: folders move
        for item, row in zip(self.item_hashes, self.targets.tolist()):
            digest.update(item.encode())
            digest.update(json.dumps(row).encode())
        return digest.hexdigest()

    def class_counts(self, task: int = 0) -> list[int]:
        return np.bincount(self.targets[:, task], minlength=self.tasks[task].num_classes).tolist()

    def report(self) -> str:
        """One paragraph for the user: how much was read, and what was not."""
        lines = [f"{self.source or self.name}: {len(self)} images, {self.tasks[0].num_classes} classes"
                 + (f" ({len(self.tasks)} tasks)" if len(self.tasks) > 1 else "")]
        if self.unreadable:
            shown = "; ".join(f"{u.path}: {u.reason}" for u in self.unreadable[:5])
            more = f" (and {len(self.unreadable) - 5} more)" if len(self.unreadable) > 5 else ""
            lines.append(f"skipped {len(self.unreadable)} unreadable image(s): {shown}{more}")
        lines += self.notes
        return "\n".join(lines)


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None = None


# -- helpers -------------------------------------------------------------------------------------------

def _label_order(names) -> list[str]:
    """Class names sorted numerically when they are all integers ('2' before '10'), else as strings."""
    names = sorted(set(names))
    try:
        return sorted(names, key=lambda n: (int(n), n))
    except ValueError:
        return names


def _check_file(path: Path) -> tuple[str | None, str | None]:
    """(sha256 of the bytes, None) for a decodable image, else (None, reason)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    try:
        load_image(data)
    except InputError as exc:
        return None, str(exc)
    return hashlib.sha256(data).hexdigest(), None


def _scan(paths: list[Path], workers: int, progress: bool, what: str) -> list[tuple[str | None, str | None]]:
    bar = tqdm(total=len(paths), desc=f"scanning {what}", unit="img", disable=not progress or len(paths) < 200,
               leave=False)
    results = []
    # Decoding releases the GIL for most of its time, so threads scale without pickling anything.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for result in pool.map(_check_file, paths):
            results.append(result)
            bar.update(1)
    bar.close()
    return results


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _build(name: str, source: str, root: Path, entries: list[tuple[Path, str]], labels: list[str], workers: int,
           progress: bool, problems: list[str], notes: list[str]) -> ImageSet:
    """Scan (path, class) entries and assemble the set; appends problems (raised by the caller)."""
    checked = _scan([p for p, _ in entries], workers, progress, name) if entries else []
    index = {label: i for i, label in enumerate(labels)}
    good_paths, hashes, targets, unreadable = [], [], [], []
    for (path, label), (digest, reason) in zip(entries, checked):
        if digest is None:
            unreadable.append(Unreadable(_display(path, root), reason))
            continue
        good_paths.append(path)
        hashes.append(digest)
        targets.append(index[label])
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=len(labels)) if labels else np.zeros(0)
    if entries and not good_paths:
        problems.append(f"{source}: none of the {len(entries)} image files could be read "
                        f"(first: {unreadable[0].path}: {unreadable[0].reason})")
    elif good_paths:
        empty = [label for label, c in zip(labels, counts) if c == 0]
        if empty:
            problems.append(f"{source}: classes with no readable image: {empty}; add images or remove them")
        if len(labels) == 1:
            problems.append(f"{source}: only one class ({labels[0]!r}); a classifier needs at least 2 classes")
    task = TaskInfo(name=name, labels=tuple(labels))
    return ImageSet(
        name=name, tasks=(task,), targets=np.asarray(targets, dtype=np.int64).reshape(-1, 1), item_hashes=hashes,
        paths=good_paths, unreadable=unreadable, notes=notes, source=source,
    )


# -- sources -------------------------------------------------------------------------------------------

def scan_folder(root: str | Path, *, workers: int = 4, progress: bool = False) -> ImageSet:
    """An ImageFolder-style directory: every image file under `root/<class>/` (recursively) is one example."""
    root = Path(root)
    problems: list[str] = []
    if not root.is_dir():
        raise DataError(f"data directory {str(root)!r} does not exist")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{root} has no class sub-folders; put the images in one sub-folder per class "
            f"(e.g. {root}/cat/1.jpg, {root}/dog/2.jpg)"
        )
    notes = []
    loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        notes.append(f"ignored {len(loose)} file(s) directly in {root} (images must sit in a class sub-folder)")
    entries: list[tuple[Path, str]] = []
    other = 0
    for d in class_dirs:
        for path in sorted(d.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                entries.append((path, d.name))
            else:
                other += 1
    if other:
        notes.append(f"ignored {other} file(s) without an image extension ({', '.join(IMAGE_EXTENSIONS)})")
    labels = _label_order(d.name for d in class_dirs)
    if not entries:
        problems.append(f"{root}: no image files in the class sub-folders {[d.name for d in class_dirs][:10]}")
    name = root.resolve().name or "images"
    data = _build(name, str(root), root, entries, labels, workers, progress, problems, notes)
    if problems:
        raise DataError(problems)
    return data


def scan_csv(path: str | Path, *, workers: int = 4, progress: bool = False) -> ImageSet:
    """A CSV with a header naming `path` and `label` columns; relative paths resolve against its directory."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {str(path)!r} does not exist")
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in ("path", "label") if c not in columns]
            if missing:
                raise DataError(
                    f"CSV {path} needs a header with the columns 'path' and 'label'; missing {missing}, "
                    f"found {columns or 'no header'}"
                )
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items() if isinstance(v, str)}
                    for row in reader]
    except UnicodeDecodeError as exc:
        raise DataError(f"CSV {path} is not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise DataError(f"CSV {path} is malformed: {exc}") from None
    entries: list[tuple[Path, str]] = []
    bad_rows: list[Unreadable] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        rel, label = row.get("path", ""), row.get("label", "")
        if not rel or not label:
            bad_rows.append(Unreadable(f"{path.name}:{line}", "empty path or label"))
            continue
        p = Path(rel)
        entries.append((p if p.is_absolute() else base / p, label))
    problems: list[str] = []
    if not entries:
        problems.append(f"CSV {path} has no rows with both a path and a label")
    labels = _label_order(label for _, label in entries)
    data = _build(path.stem or "images", str(path), base, entries, labels, workers, progress, problems, [])
    data.unreadable = bad_rows + data.unreadable
    if problems:
        raise DataError(problems)
    return data


def stratified_split(data: ImageSet, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held-out) index arrays: `fraction` of every class of the first task, fixed by `seed`.

    Classes with at least 2 images give at least one to the held-out side, so every class is validated.
    """
    rng = np.random.default_rng([seed, 7919])
    labels = data.targets[:, 0]
    keep, held = [], []
    for c in range(data.tasks[0].num_classes):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        n_held = int(round(fraction * len(members)))
        if fraction > 0 and n_held == 0 and len(members) >= 2:
            n_held = 1
        n_held = min(n_held, len(members) - 1) if len(members) else 0
        held.append(members[:n_held])
        keep.append(members[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def make_splits(pool: ImageSet, *, val_fraction: float, seed: int, val: ImageSet | None = None,
                test: ImageSet | None = None) -> Splits:
    """Train/val(/test): the validation set is given, or carved out of the pool per class."""
    if val is not None:
        if [t.labels for t in val.tasks] != [t.labels for t in pool.tasks]:
            raise DataError(
                f"the validation data's classes {list(val.tasks[0].labels)} differ from the training data's "
                f"{list(pool.tasks[0].labels)}"
            )
        return Splits(train=pool, val=val, test=test)
    if val_fraction <= 0:
        return Splits(train=pool, val=None, test=test)
    keep, held = stratified_split(pool, val_fraction, seed=seed)
    train = pool.subset(keep)
    train.unreadable, train.notes, train.source = pool.unreadable, pool.notes, pool.source
    return Splits(train=train, val=pool.subset(held) if len(held) else None, test=test)


def sanitize_name(text: str) -> str:
    """A store-safe tuner name from a folder, file or task name (lowercase, a-z0-9._-)."""
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789._-")
    out = "".join(c if c in allowed else "-" for c in text.lower())
    while ".." in out:
        out = out.replace("..", ".")
    return out.strip("._-")[:64].rstrip("._-") or "tuner"
