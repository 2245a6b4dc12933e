"""Parameter counts against the paper (ViT-B/16, dim 10, 100 classes)."""
import json
import subprocess
import sys

import pytest

from restuning.describe import describe


@pytest.mark.parametrize(
    "kwargs, paper_m",
    [
        ({}, 0.46),  # Table 3b, H + V
        ({"vertical": "none"}, 0.27),  # H only
        ({"horizontal": "none"}, 0.27),  # V only
        ({"horizontal": "none", "vertical": "none"}, 0.08),  # no tuners: the head (Table 3b lists 0.07M)
        ({"layers": "1"}, 0.11),  # Table 14, 1 -> 1
        ({"layers": "1-3"}, 0.17),
        ({"layers": "1-6"}, 0.27),
        ({"layers": "1-9"}, 0.36),
        ({"layers": "1,2,4,5,7,8,10-12"}, 0.36),  # Table 15, drop {3, 6, 9}
        ({"layers": "1,4,6,8,10,12"}, 0.27),  # Table 15, drop {2, 3, 5, 7, 9, 11}
        ({"layers": "12"}, 0.11),  # Table 15, drop {1 … 11}
    ],
)
def test_bypass_parameter_counts_match_paper(kwargs, paper_m):
    result = describe("vit_base_patch16_224", num_classes=100, **kwargs)
    assert abs(result["trainable_params"] / 1e6 - paper_m) <= 0.011, result["trainable_params"]


def test_exact_breakdown():
    result = describe("vit_base_patch16_224", num_classes=100)
    assert result["breakdown"] == {"horizontal": 12 * 16138, "vertical": 12 * 16138, "lambda": 12, "head": 76900}
    assert result["backbone_params"] == 85798656


def test_res_tuning_dual_and_tri():
    dual = describe("vit_base_patch16_224", method="restuning", num_classes=100)
    tri = describe("vit_base_patch16_224", method="restuning", num_classes=100, block="adapter")
    assert abs(dual["trainable_params"] / 1e6 - 0.48) < 0.03  # paper Table 3a: 0.48M
    assert abs(tri["trainable_params"] / 1e6 - 0.67) < 0.03  # paper Table 3a: 0.67M


def test_cli_json():
    out = subprocess.run(
        [sys.executable, "-m", "restune", "describe", "--backbone", "vit_base_patch16_224", "--dim", "10",
         "--num-classes", "100", "--json"],
        capture_output=True, text=True, check=True,
    )
    data = json.loads(out.stdout)
    assert isinstance(data["trainable_params"], int) and isinstance(data["backbone_params"], int)
    assert data["trainable_params"] == 464224


def test_cli_bad_input_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "restune", "describe", "--backbone", "vit_base_patch16_224", "--dim", "0"],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "dim must be a positive integer" in out.stderr
