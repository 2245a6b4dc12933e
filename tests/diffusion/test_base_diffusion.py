"""`restune train base-diffusion`: a (very short) run writes a model directory that every model consumer takes."""
from __future__ import annotations

import json

import pytest

from restune.cli import main


def test_train_base_diffusion_writes_a_directory_the_pipeline_loads(tmp_path, capsys):
    out = tmp_path / "model"
    code = main(["train", "base-diffusion", "--out", str(out), "--steps", "2", "--batch-size", "4",
                 "--warmup-steps", "1", "--threads", "1", "--no-progress", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["command"] == (f"restune train base-diffusion --out {out} --steps 2 --batch-size 4 "
                                 "--warmup-steps 1 --threads 1")
    assert record["config"]["steps"] == 2 and record["seed"] == 0 and record["images_seen"] == 8
    assert record["weights_dtype"] == "float16" and record["parameters"]["vae"] == 0
    assert json.loads((out / "training.json").read_text())["unet_fingerprint"] == record["unet_fingerprint"]
    assert sorted(p.name for p in out.iterdir()) == ["generation_defaults.json", "scheduler", "text_encoder",
                                                      "tokenizer", "training.json", "unet", "vae"]
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".ckpt", ".pt", ".pth", ".pkl")]

    from safetensors import safe_open

    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}

    from restuning.diffusion.pipeline import StylePipeline

    pipe = StylePipeline.load(str(out))
    assert pipe.fingerprint == record["unet_fingerprint"]
    assert pipe.default_size == 32 and pipe.vae_scale_factor == 2 and pipe.tap_channels == [64, 64, 64, 64, 32]
    result = pipe.generate(["a red circle on the left"], ["base", "s"], {"s": pipe.new_tuner(seed=0)}, steps=2,
                           seed=0)
    assert [im.image.size for im in result.images] == [(32, 32), (32, 32)]
    # a request that does not say gets the model's own defaults (generation_defaults.json)
    assert (pipe.limits.default_steps, pipe.limits.default_guidance, pipe.limits.default_sampler) == (25, 1.5, "ddim")
    assert result.request.guidance_scale == 1.5 and result.request.sampler == "ddim"


def test_a_model_directory_s_generation_defaults_are_checked(tmp_path):
    """A bad generation_defaults.json is refused with every problem in one error; without one, SD's defaults."""
    from restuning.diffusion.loading import build_tiny_random, load_components, save_components
    from restuning.diffusion.pipeline import StylePipeline
    from restuning.errors import ConfigError

    model = save_components(build_tiny_random(), tmp_path / "model")
    pipe = StylePipeline.load(str(model))
    assert (pipe.limits.default_steps, pipe.limits.default_guidance, pipe.limits.default_sampler) == (50, 3.0, "pndm")
    (model / "generation_defaults.json").write_text(json.dumps({"steps": 0, "guidance_scale": 0.5, "cfg": 2}))
    with pytest.raises(ConfigError) as err:
        load_components(str(model))
    for needle in ("unknown key 'cfg'", "steps must be a positive integer, got 0",
                   "guidance_scale must be a number >= 1, got 0.5"):
        assert needle in str(err.value)
    (model / "generation_defaults.json").write_text(json.dumps({"sampler": "euler"}))
    with pytest.raises(ConfigError, match="default sampler 'euler' is not one of"):
        StylePipeline.load(str(model))
    (model / "generation_defaults.json").write_text(json.dumps({"guidance_scale": 2, "sampler": "plms"}))
    pipe = StylePipeline.load(str(model))
    assert (pipe.limits.default_steps, pipe.limits.default_guidance, pipe.limits.default_sampler) == (50, 2.0, "pndm")


def test_train_base_diffusion_refuses_bad_settings_and_a_used_directory(tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("something")
    code = main(["train", "base-diffusion", "--out", str(tmp_path / "used"), "--steps", "0", "--lr", "-1",
                 "--caption-dropout", "1.5"])
    err = capsys.readouterr().err
    assert code == 2
    for needle in ("--steps must be a positive integer", "--lr must be a positive number",
                   "--caption-dropout must be in [0, 1)"):
        assert needle in err
    from training.base_diffusion import train_base_diffusion
    from training.base_diffusion_config import BaseDiffusionConfig

    with pytest.raises(Exception, match="exists and is not an empty directory"):
        train_base_diffusion(BaseDiffusionConfig(steps=1, batch_size=2), tmp_path / "used", progress=False)
