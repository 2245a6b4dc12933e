"""The shared argparse integer types: what they accept and the one-line error for what they do not."""
from __future__ import annotations

import argparse

import pytest

from restuning.cli_types import non_negative_int, positive_int


def test_integer_types_accept_their_range_and_name_it_otherwise():
    assert positive_int("1") == 1 and non_negative_int("0") == 0
    for parse, bad, expected in ((positive_int, "0", "a positive integer"), (positive_int, "x", "a positive integer"),
                                 (non_negative_int, "-1", "an integer >= 0"), (non_negative_int, "1.5", "an integer >= 0")):
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected {expected}, got '{bad}'"):
            parse(bad)
