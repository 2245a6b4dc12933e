"""One result writer and one report for every benchmark: a JSON file (plus its figures) under bench/results/,
and the text a person reads, or the JSON itself with --json."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RESULTS_DIR = Path("bench/results")


@dataclass
class BenchResult:
    name: str  # file stem under --out-dir: NAME.json
    payload: dict
    report: str  # what a person reads on the terminal
    figures: dict[str, Callable[[Path], object]] = field(default_factory=dict)  # file name -> writer(path)
    passed: bool = True  # a benchmark with a pass rule (the soak) exits 1 when it fails
    printed_keys_left_out: tuple[str, ...] = ()  # bulky raw samples kept in the file, not printed by --json


def write_results(name: str, payload: dict, out_dir: Path | str = RESULTS_DIR) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def emit(result: BenchResult, *, out_dir: Path | str = RESULTS_DIR, save: bool = True, as_json: bool = False) -> int:
    """Save (unless told not to), then print the report or the JSON; the exit code says whether it passed."""
    written: list[Path] = []
    if save:
        for file_name, write in result.figures.items():
            path = Path(out_dir) / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            if write(path) is not False:  # a figure writer returns False when it cannot draw (no matplotlib)
                written.append(path)
        written.insert(0, write_results(result.name, result.payload, out_dir))
    if as_json:
        print(json.dumps({k: v for k, v in result.payload.items() if k not in result.printed_keys_left_out},
                         indent=2))
    else:
        print(result.report)
    for path in written:  # with --json, stdout holds the JSON and nothing else
        print(f"wrote {path}", file=sys.stderr if as_json else sys.stdout)
    return 0 if result.passed else 1
