"""argparse types shared by every command: positive and non-negative integers, comma-separated lists."""
from __future__ import annotations

import argparse


def _int_at_least(minimum: int, noun: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def comma_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in text.split(",") if item.strip()]


def positive_list(cast: type[int] | type[float]):
    """A comma-separated list of positive ints or floats ("1,32", "0.05,0.01")."""
    noun = "integers" if cast is int else "numbers"

    def parse(text: str) -> list:
        try:
            values = [cast(v) for v in comma_list(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}, got {text!r}") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive {noun}, got {text!r}")
        return values

    return parse
