"""Layer specs: which backbone blocks carry tuners (paper Tables 14–15).

Blocks are numbered 1 … L as in the paper. A spec is "all", or a comma list of
numbers and ranges: "1-6" (Table 14, layers 1→6), "1,4,7-12" (Table 15, a drop set).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from restuning.checks import is_int
from restuning.errors import ConfigError


def parse_layers(spec: str | Sequence[int] | None, depth: int) -> tuple[int, ...]:
    """Sorted, de-duplicated 1-based block numbers; every problem reported at once."""
    if spec is None or spec == "all":
        return tuple(range(1, depth + 1))
    items: list[int] = []
    problems: list[str] = []
    if isinstance(spec, str):
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                if sep:
                    a, b = int(lo), int(hi)
                    if a > b:
                        problems.append(f"layer range {part!r} runs backwards")
                        continue
                    items.extend(range(a, b + 1))
                else:
                    items.append(int(part))
            except ValueError:
                problems.append(f"layer spec item {part!r} is not a number or a range like '1-6'")
    else:
        for item in spec:
            if not is_int(item):
                problems.append(f"layer {item!r} is not an integer")
            else:
                items.append(item)
    out_of_range = sorted({i for i in items if not 1 <= i <= depth})
    if out_of_range:
        problems.append(f"layers {out_of_range} are out of range; this backbone has blocks 1-{depth}")
    if not items and not problems:
        problems.append(f"layer spec {spec!r} selects no layers; use 'all' or numbers in 1-{depth}")
    if problems:
        raise ConfigError(problems)
    return tuple(sorted(set(items)))


def format_layers(layers: Iterable[int]) -> str:
    """(1, 2, 3, 5) -> '1-3,5'."""
    layers = sorted(layers)
    parts: list[str] = []
    start = prev = None
    for layer in layers:
        if start is None:
            start = prev = layer
        elif layer == prev + 1:
            prev = layer
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = layer
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(parts)
