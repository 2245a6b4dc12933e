"""`restune bench styles` at tiny sizes: the report's shape (the figures come from a full run, bench/results/)."""
from __future__ import annotations

import json

import torch
from PIL import Image

from restune.cli import main


def test_bench_styles_writes_json_and_grid(tmp_path, capsys):
    code = main(["bench", "styles", "--prompts", "4", "--steps", "2", "--style-steps", "2", "--style-images", "4",
                 "--classifier-scenes", "60", "--classifier-epochs", "1", "--head-ceiling-steps", "3",
                 "--threads", "1", "--out-dir", str(tmp_path), "--no-progress", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    payload = json.loads(out[out.index("{"):])
    slug = f"tiny-trained-cpu-{torch.get_num_threads()}t"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"styles-grid-{slug}.png", f"styles-{slug}.json"]
    assert json.loads((tmp_path / f"styles-{slug}.json").read_text())["base_shape_accuracy"] == \
        payload["base_shape_accuracy"]
    assert payload["model"] == "tiny-trained" and payload["eval_prompts"] == 4 and payload["chance"] == 0.3333
    assert 0 <= payload["base_shape_accuracy"] <= 1
    assert set(payload["styles"]) == {"crimson", "stripes", "blur"}
    for name, r in payload["styles"].items():
        # from the unrounded distances: the JSON's 6 decimals of a small distance can move the 4th of the ratio
        assert r["distance_base"] > 0 and abs(r["distance_reduction"] - (1 - r["distance_styled"] /
                                                                          r["distance_base"])) < 1e-3
        assert 0 <= r["shape_accuracy"] <= 1 and r["training"]["steps"] == 2
        assert payload["meets_targets"][f"{name}_distance_reduction"] == (r["distance_reduction"] >= 0.5)
        assert set(r["ceilings"]) == {"transform", "head"} and r["ceilings"]["head"]["steps"] == 3
        for ceiling in r["ceilings"].values():
            assert 0 <= ceiling["shape_accuracy"] <= 1
            assert f"{r['second_view']}_distance_reduction" in ceiling
        assert r["second_view"] == ("hard_bins" if name == "crimson" else "per_image")
        assert r[r["second_view"]]["distance_base"] > 0
    assert payload["classifier"]["train_scenes"] == 60 and "drawn_test_accuracy_crimson" in payload["classifier"]
    assert payload["targets"] == {"base_shape_accuracy": 0.8, "style_distance_reduction": 0.5,
                                  "styled_shape_accuracy": 0.7}
    grid = Image.open(tmp_path / f"styles-grid-{slug}.png")
    assert grid.size[0] == 170 + 4 * (128 + 4)
