"""Generation in one batched pass: request validation, batch independence, a trained tuner's effect,
artifacts through the tuner store."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from restuning.diffusion.pipeline import GenerationInputError, GenerationLimits
from restuning.errors import ConfigError, InputError, RestuneError

SMALL = {"steps": 3, "height": 32, "width": 32}


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# -- bad input: each one a clear error, every problem at once ---------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"styles": ["base", "ink"]}, "unknown style(s) ['ink']; available: 'base', 's1', 's2'"),
    ({"prompts": ["a"] * 3, "styles": ["base", "s1", "s2"], "limits": GenerationLimits(max_images=8)},
     "3 prompts × 3 styles = 9 images, over the limit of 8 images per request"),
    ({"steps": 0}, "steps must be an integer in [1, 150], got 0"),
    ({"steps": 151}, "steps must be an integer in [1, 150], got 151"),
    ({"height": 2048}, "height must be an integer in [32, 1024], got 2048"),
    ({"width": 48}, "width 48 is not a multiple of 32"),
    ({"guidance_scale": 0.5}, "guidance_scale must be a number in [1.0, 30.0], got 0.5"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be a number"),
    ({"prompts": ["a cat", "   "]}, "prompts[1] is empty; give a non-empty prompt"),
    ({"prompts": []}, "prompts must hold at least one prompt"),
    ({"prompts": "a cat"}, "prompts must be a list of strings"),
    ({"sampler": "euler"}, "unknown sampler 'euler'; choose one of 'pndm', 'ddim', 'plms'"),
    ({"styles": ["s1", "s1"]}, "styles are repeated: ['s1']"),
    ({"seed": -1}, "seed must be an integer in [0, 4294967295]"),
    ({"seed": [1, 2, 3]}, "a seed list needs one integer"),
])
def test_each_bad_request_is_a_clear_error(tiny_pipe, random_tuners, kwargs, message):
    kwargs = dict(kwargs)
    limits = kwargs.pop("limits", None)
    if limits is not None:
        tiny_pipe.limits, saved = limits, tiny_pipe.limits
    try:
        args = {"prompts": ["a cat"], "styles": ["base"], **SMALL, **kwargs}
        with pytest.raises(GenerationInputError) as info:
            tiny_pipe.generate(args.pop("prompts"), args.pop("styles"), random_tuners, **args)
    finally:
        if limits is not None:
            tiny_pipe.limits = saved
    assert message in str(info.value)
    assert isinstance(info.value, InputError) and isinstance(info.value, RestuneError)


def test_all_problems_are_reported_together(tiny_pipe, random_tuners):
    with pytest.raises(GenerationInputError) as info:
        tiny_pipe.generate([""], ["nope"], random_tuners, steps=1000, guidance_scale=100, height=33)
    assert len(info.value.problems) == 5
    assert info.value.unknown_styles == ["nope"]


# -- one pass ------------------------------------------------------------------------------------

def test_mixed_batch_equals_each_image_alone(tiny_pipe, random_tuners):
    """Stated tolerance: final float32 latents within 1e-4 (max abs), decoded pixels within 1 of 255.

    Both runs start from the same per-image noise and apply the same per-row operations; only
    batched GEMMs/convs may sum in another order, so the last bits can differ and grow slightly over
    the denoising steps (observed: ≤ 1e-5 on latents of std ≈ 4.5; a style changes them by ≈ 1).
    """
    prompts, styles = ["a cat", "a dog on a hill"], ["base", "s1", "s2"]
    mixed = tiny_pipe.generate(prompts, styles, random_tuners, seed=5, return_latents=True, **SMALL)
    assert [(g.prompt, g.style, g.seed) for g in mixed.images] == [
        (p, s, 5 + i) for i, p in enumerate(prompts) for s in styles]
    assert mixed.timings_ms["unet_batch"] == 2 * 6  # every pair and its CFG branch in one U-Net batch
    assert mixed.timings_ms["unet_forwards"] == 4  # PLMS with 3 steps runs the U-Net 4 times
    for i, img in enumerate(mixed.images):
        alone = tiny_pipe.generate([img.prompt], [img.style], random_tuners, seed=[img.seed],
                                   return_latents=True, **SMALL)
        assert (alone.latents[0] - mixed.latents[i]).abs().max().item() <= 1e-4
        assert np.abs(pixels(alone.images[0].image) - pixels(img.image)).max() <= 1
    # The styles really differ from each other and from base.
    assert (mixed.latents[0] - mixed.latents[1]).abs().max() > 0.1
    assert (mixed.latents[1] - mixed.latents[2]).abs().max() > 0.1


def test_png_and_other_samplers(tiny_pipe, random_tuners):
    import base64
    import io

    from PIL import Image

    ddim = tiny_pipe.generate(["a cat"], ["s1"], random_tuners, sampler="ddim", seed=1, **SMALL)
    no_cfg = tiny_pipe.generate(["a cat"], ["s1"], random_tuners, guidance_scale=1.0, seed=1, **SMALL)
    assert no_cfg.timings_ms["unet_batch"] == 1  # guidance 1.0 is the conditional prediction alone
    png = ddim.images[0].png_base64()
    image = Image.open(io.BytesIO(base64.b64decode(png)))
    assert image.size == (32, 32) and image.format == "PNG"
    assert ddim.request.sampler == "ddim"
    body = ddim.to_json()  # the response contract of the server's POST /v1/generate
    assert body["images"] == [{"prompt": "a cat", "style": "s1", "seed": 1, "png_base64": png}]
    assert set(body["timings_ms"]) >= {"text_encode_ms", "denoise_ms", "decode_ms", "total_ms"}
    assert tiny_pipe.generate(["a cat"], None, {}, sampler="plms", seed=1, **SMALL).request.sampler == "pndm"


# -- training changes the images --------------------------------------------------------------------

def test_trained_tuner_lowers_the_loss_and_changes_the_images(tiny_pipe, trained):
    m = trained.metrics
    assert m["images"] == 8 and m["unreadable_files"] == 1 and m["steps"] == 30
    # Same images, noise and timesteps: the trained tuner predicts the noise better than the base U-Net.
    assert m["eval_loss_trained"] < m["eval_loss_base"]
    tuners = {"red-stripes": trained.tuner.eval()}
    out = tiny_pipe.generate(["a photo in red-stripes style"], ["base", "red-stripes"], tuners, seed=3,
                             return_latents=True, **SMALL)
    assert np.abs(pixels(out.images[0].image) - pixels(out.images[1].image)).mean() > 2.0
    base_alone = tiny_pipe.generate(["a photo in red-stripes style"], ["base"], {}, seed=3, **SMALL)
    assert np.abs(pixels(base_alone.images[0].image) - pixels(out.images[0].image)).max() <= 1


# -- artifacts through the tuner store --------------------------------------------------------------

def test_artifact_round_trip_through_the_store(tiny_pipe, trained, tmp_path):
    from tuner_store.artifact import decode_artifact, encode_artifact
    from tuner_store.urls import open_store

    artifact = trained.artifact
    assert artifact.kind == "diffusion" and artifact.name == "red-stripes"
    assert artifact.backbone["fingerprint"] == tiny_pipe.fingerprint
    assert artifact.tuner["training"]["prompt"] == "a photo in red-stripes style"
    with open_store(f"file://{tmp_path / 'store'}") as store:
        ref = store.put(artifact).ref
        loaded = store.get("red-stripes")
    assert ref == "red-stripes@1"
    tuner = tiny_pipe.tuner_from_artifact(loaded)
    for name, tensor in trained.tuner.state_dict().items():
        assert torch.equal(tuner.state_dict()[name], tensor)
    decoded = decode_artifact(encode_artifact(artifact), backbone_fingerprint=tiny_pipe.fingerprint)
    assert decoded.tuner == artifact.tuner


def test_store_rejects_wrong_shapes_and_foreign_tuners(tiny_pipe, trained):
    from dataclasses import replace

    from tuner_store.artifact import decode_artifact, encode_artifact, validate_artifact
    from tuner_store.errors import ArtifactError

    artifact = trained.artifact
    bad = replace(artifact, tensors={**artifact.tensors, "stages.0.horizontal.down.weight": torch.zeros(5, 5)})
    with pytest.raises(ArtifactError, match=r"stages.0.horizontal.down.weight' has shape \[5, 5\]"):
        decode_artifact(encode_artifact(bad))
    wrong_channels = replace(artifact, backbone={**artifact.backbone, "tap_channels": [1280] * 6})
    with pytest.raises(ArtifactError, match="do not match the U-Net's tap channels"):
        validate_artifact(wrong_channels)
    with pytest.raises(ArtifactError, match="fingerprint"):
        decode_artifact(encode_artifact(artifact), backbone_fingerprint="0" * 64)

    other_unet = replace(artifact, backbone={**artifact.backbone, "fingerprint": "f" * 64})
    with pytest.raises(ConfigError, match="only works on the exact U-Net it was trained with"):
        tiny_pipe.tuner_from_artifact(other_unet)
    classifier = replace(artifact, kind="classification")
    with pytest.raises(ConfigError, match="is a 'classification' tuner; image generation needs a 'diffusion' tuner"):
        tiny_pipe.tuner_from_artifact(classifier)


def test_the_samplers_offered_are_those_that_can_run_the_model():
    """PNDM (SD's PLMS) steps on ε or v; a U-Net that predicts the clean image (tiny-trained) gets DDIM only."""
    from restuning.diffusion.pipeline import DEFAULT_LIMITS, limits_for_prediction, make_scheduler

    assert limits_for_prediction(DEFAULT_LIMITS, "epsilon") == DEFAULT_LIMITS
    assert limits_for_prediction(DEFAULT_LIMITS, "v_prediction") == DEFAULT_LIMITS
    x0 = limits_for_prediction(DEFAULT_LIMITS, "sample")
    assert x0.samplers == ("ddim",) and x0.default_sampler == "ddim"
    with pytest.raises(ConfigError, match="no sampler can run a U-Net whose prediction_type is 'flow'"):
        limits_for_prediction(DEFAULT_LIMITS, "flow")
    from restuning.diffusion.pipeline import validate_request

    for sampler in ("pndm", "plms"):
        with pytest.raises(GenerationInputError, match="sampler 'pndm' cannot run this model .*choose one of 'ddim'$"):
            validate_request(["a cat"], None, available_styles=[], limits=x0, sampler=sampler)
    assert validate_request(["a cat"], None, available_styles=[], limits=x0).sampler == "ddim"
    assert make_scheduler("ddim", {"prediction_type": "sample", "clip_sample": True}).config.prediction_type == "sample"
