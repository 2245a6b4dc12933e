"""Where `--data` comes from: an image folder, a CSV of (path, label), or a built-in task of the demo suite."""
from __future__ import annotations

from pathlib import Path

from training import demo_tasks
from training.data import BUILTIN_PREFIX, ImageSet, scan_csv, scan_folder
from training.errors import DataError


def resolve_data(spec: str, *, seed: int = 0, workers: int = 4, progress: bool = False,
                 builtin_sizes: dict | None = None) -> tuple[ImageSet, ImageSet | None]:
    """(train pool, fixed test split or None) for a --data SPEC; see the module docstring."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError("--data is empty; give an image folder, a CSV file (path,label) or a built-in task name")
    forced = spec.startswith(BUILTIN_PREFIX)
    name = spec[len(BUILTIN_PREFIX):] if forced else spec
    path = Path(spec)
    if not forced and path.is_dir():
        return scan_folder(path, workers=workers, progress=progress), None
    if not forced and path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"--data {spec!r} is a file but not a CSV; give a folder, a .csv file or a task name")
        return scan_csv(path, workers=workers, progress=progress), None
    if name in demo_tasks.TASKS:
        sizes = builtin_sizes or {}
        train = demo_tasks.load_task(name, "train", seed=seed, size=sizes.get("train"))
        test = demo_tasks.load_task(name, "test", seed=seed, size=sizes.get("test"))
        return train, test
    looks_like_path = forced is False and ("/" in spec or spec.endswith(".csv") or spec.startswith("."))
    if looks_like_path:
        raise DataError(f"--data {spec!r} does not exist (expected an image folder or a CSV file)")
    raise DataError(
        f"--data {spec!r} is not a directory, a CSV file or a built-in task; "
        f"built-in tasks: {', '.join(demo_tasks.TASKS)}"
    )
