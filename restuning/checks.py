"""Value checks that validation everywhere shares."""
from __future__ import annotations

import math


def is_int(value: object) -> bool:
    """An int that is not a bool (True is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_positive_int(value: object) -> bool:
    return is_int(value) and value > 0
