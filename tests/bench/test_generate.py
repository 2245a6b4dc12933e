"""Benchmark schemas at tiny sizes (the numbers themselves come from `restune bench …` on a quiet machine)."""
from __future__ import annotations

import json

import torch
from PIL import Image

from restune.cli import main


def test_bench_generate_writes_json_and_grid(tmp_path, capsys):
    code = main(["bench", "generate", "--styles", "2", "--prompts", "2", "--steps", "2", "--height", "32",
                 "--width", "32", "--tuners", "random", "--repeats", "1", "--warmup", "0", "--device", "cpu",
                 "--out-dir", str(tmp_path), "--no-progress", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    payload = json.loads(out[out.index("{"):])
    files = sorted(p.name for p in tmp_path.iterdir())
    slug = f"tiny-random-cpu-{torch.get_num_threads()}t"
    assert files == [f"generate-grid-{slug}.png", f"generate-{slug}.json"]
    assert json.loads((tmp_path / files[1]).read_text())["median_ms"] == payload["median_ms"]
    assert set(payload["median_ms"]) == {"one_pass", "sequential"}
    assert payload["one_pass_over_sequential"] == round(
        payload["median_ms"]["one_pass"] / payload["median_ms"]["sequential"], 4)
    assert payload["styles"] == 2 and payload["prompts"] == 2 and payload["images"] == 4
    assert payload["one_pass_unet_batch"] == 8 and payload["sequential_unet_batch"] == 4
    assert payload["max_abs_pixel_diff_one_pass_vs_sequential"] <= 1
    assert payload["tuners"] == "random" and "not trained" in payload["tuner_note"]
    for key in ("device", "torch", "machine", "diffusers", "unet_fingerprint", "steps", "unet_forwards_per_run"):
        assert key in payload
    grid = Image.open(tmp_path / files[0])
    assert grid.size[0] == 3 * (128 + 4)  # base + 2 styles, one cell each (32 px images shown 4x)


def test_train_memory_diffusion_schema(tmp_path, capsys):
    from bench.diffusion_memory import diffusion_train_memory
    from bench.results import emit

    result = diffusion_train_memory(device="cpu", batch_size=2, resolution=32, steps=1, threads=1)
    payload = result.payload
    bypass, full = payload["methods"]["bypass"], payload["methods"]["full"]
    assert bypass["trainable_params"] == 13_392 and full["trainable_params"] == 2_140_036
    assert payload["options"]["batch_size"] == 2
    for r in (bypass, full):
        assert r["peak_bytes"] >= r["before_steps_bytes"] > 0 and r["step_ms_median"] > 0
    assert set(payload["ratios_bypass_over_full"]) == {"peak_memory", "training_extra_memory", "step_time"}
    assert payload["paper"]["memory_ratio"] == 0.29 and payload["paper"]["time_ratio"] == 0.41
    assert emit(result, out_dir=tmp_path) == 0
    written = json.loads((tmp_path / f"{result.name}.json").read_text())
    assert written["methods"]["full"]["trainable_params"] == 2_140_036
    assert "bypass / full: peak memory" in capsys.readouterr().out
