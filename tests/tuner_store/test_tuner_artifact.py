"""The artifact format: round trips, validation that reports every problem, and the kind registry."""
from __future__ import annotations

import json
import re
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.tuner_store.tuner_helpers import (
    BAD_INPUT_IDS,
    LABELS,
    PICKLE_BYTES,
    bad_inputs,
    make_artifact,
    make_bypass,
    with_tensor,
)
from tuner_store import (
    ArtifactError,
    build_tuner,
    classification_artifact,
    decode_artifact,
    encode_artifact,
    read_artifact,
    write_artifact,
)
from tuner_store.artifact import NAME_PATTERN, is_valid_name, weights_sha256


def _features(backbone, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, *backbone.info.image_size, generator=g)
    return backbone.forward_features(images)


def test_round_trip_preserves_config_tensors_and_logits(micro_backbone):
    bypass = make_bypass(micro_backbone, seed=3).eval()
    artifact = classification_artifact("digits", bypass, LABELS, micro_backbone, {"val_acc": 0.75, "epochs": 2})
    decoded = decode_artifact(encode_artifact(artifact), backbone_fingerprint=micro_backbone.fingerprint())

    for field in ("name", "kind", "labels", "tuner", "backbone", "metrics", "created_at", "version", "format_version"):
        assert getattr(decoded, field) == getattr(artifact, field), field
    assert decoded.tensors.keys() == artifact.tensors.keys()
    for name, tensor in artifact.tensors.items():
        assert torch.equal(decoded.tensors[name], tensor), name
    assert decoded.weights_sha256 == artifact.weights_sha256
    assert decoded.backbone["fingerprint"] == micro_backbone.fingerprint()

    rebuilt = build_tuner(decoded)
    assert not rebuilt.training
    features = _features(micro_backbone)
    assert torch.equal(rebuilt(features, micro_backbone), bypass(features, micro_backbone))


def test_metadata_is_plain_safetensors_json(micro_backbone, tmp_path):
    """Any safetensors reader sees the config; nothing in the file needs restune (or pickle) to read."""
    artifact = make_artifact(micro_backbone)
    path = write_artifact(artifact, tmp_path / "digits.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        names = set(f.keys())
    config = json.loads(metadata["restune"])
    assert metadata["format"] == "pt"
    assert set(config) == {"format_version", "name", "version", "kind", "labels", "tuner", "backbone", "metrics",
                           "created_at", "weights_sha256"}
    assert config["weights_sha256"] == artifact.weights_sha256
    assert config["backbone"]["name"] == "restune_vit_micro"
    assert names == set(artifact.tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["digits.safetensors"]  # no temp file left behind
    assert read_artifact(path).weights_sha256 == artifact.weights_sha256


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_round_trip(micro_backbone, dtype):
    artifact = make_artifact(micro_backbone)
    half = replace(artifact, tensors={k: v.to(dtype) for k, v in artifact.tensors.items()})
    decoded = decode_artifact(encode_artifact(half))
    assert all(t.dtype == dtype for t in decoded.tensors.values())
    assert decoded.weights_sha256 == half.weights_sha256 != artifact.weights_sha256
    assert build_tuner(decoded).head.weight.dtype == torch.float32


def test_weights_sha256_covers_names_dtypes_shapes_and_values():
    base = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    variants = [
        {"b": base["a"]},
        {"a": base["a"].to(torch.float16)},
        {"a": base["a"].reshape(3, 2)},
        {"a": base["a"] + 1},
        {"a": base["a"], "b": torch.zeros(0)},
    ]
    digests = {weights_sha256(base)} | {weights_sha256(v) for v in variants}
    assert len(digests) == 1 + len(variants)
    assert weights_sha256({"a": base["a"].t().contiguous().t()}) == weights_sha256(base)  # layout does not matter


@pytest.mark.parametrize("case", BAD_INPUT_IDS)
def test_decode_rejects_bad_input_with_a_clear_message(case, micro_backbone, other_backbone_fingerprint):
    bad = bad_inputs(make_artifact(micro_backbone), other_backbone_fingerprint)[case]
    kwargs = dict(bad.put_kwargs)
    if bad.max_bytes is not None:
        kwargs["max_bytes"] = bad.max_bytes
    with pytest.raises(ArtifactError) as info:
        decode_artifact(bad.data, **kwargs)
    assert bad.message in str(info.value)
    assert "\n" not in str(info.value)


def test_other_backbone_message_names_both_backbones(micro_backbone, other_backbone_fingerprint):
    data = encode_artifact(make_artifact(micro_backbone))
    with pytest.raises(ArtifactError) as info:
        decode_artifact(data, backbone_fingerprint=other_backbone_fingerprint, backbone_name="restune_vit_micro")
    message = str(info.value)
    assert micro_backbone.fingerprint()[:12] in message and other_backbone_fingerprint[:12] in message
    assert "trained on backbone 'restune_vit_micro'" in message


def test_every_problem_is_reported_at_once(micro_backbone):
    good = make_artifact(micro_backbone)
    bad = with_tensor(good, "head.bias", torch.tensor([0.0, float("nan"), 0.0]))
    bad = with_tensor(bad, "lambda_logits", torch.zeros(3, dtype=torch.int64))
    bad = with_tensor(bad, "head.weight", torch.zeros(3, 7))
    bad = replace(bad, name="../evil", labels=["cat"], created_at="yesterday")
    with pytest.raises(ArtifactError) as info:
        decode_artifact(encode_artifact(bad))
    problems = info.value.problems
    expected = ["name '../evil' is not allowed", "created_at must be an ISO-8601 time", "int64", "1 NaN",
                "1 labels for a head with 3 outputs", "'head.weight' has shape [3, 7]"]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)


def test_schema_problems_name_missing_and_unknown_keys(micro_backbone):
    from safetensors.torch import save

    good = make_artifact(micro_backbone)
    config = good.config()
    del config["labels"], config["metrics"]
    config["colour"] = "red"
    data = save(dict(good.tensors), metadata={"format": "pt", "restune": json.dumps(config)})
    with pytest.raises(ArtifactError) as info:
        decode_artifact(data)
    assert "metadata is missing ['labels', 'metrics']" in str(info.value)
    assert "unknown keys ['colour']" in str(info.value)


def test_tuner_structure_problems_come_from_the_bypass_config(micro_backbone):
    good = make_artifact(micro_backbone)
    tuner = {**good.tuner, "layers": [1, 9], "horizontal": {"type": "lora", "dim": 4}}
    with pytest.raises(ArtifactError) as info:
        decode_artifact(encode_artifact(replace(good, tuner=tuner)))
    message = str(info.value)
    assert "tuner: " in message and "'lora'" in message and "out of range" in message


def test_a_pickle_renamed_safetensors_is_never_loaded(tmp_path):
    path = tmp_path / "tuner.safetensors"
    path.write_bytes(PICKLE_BYTES)
    with pytest.raises(ArtifactError) as info:
        read_artifact(path)
    assert "Python pickle" in str(info.value) and str(path) in str(info.value)


def test_read_artifact_checks_the_size_before_reading(tmp_path, micro_backbone):
    path = write_artifact(make_artifact(micro_backbone), tmp_path / "a.safetensors")
    with pytest.raises(ArtifactError, match="over the limit of 100 bytes"):
        read_artifact(path, max_bytes=100)
    with pytest.raises(ArtifactError, match="cannot read"):
        read_artifact(tmp_path / "missing.safetensors")


def test_classification_artifact_validates_at_creation(micro_backbone):
    with pytest.raises(ArtifactError, match="2 labels for a head with 3 outputs"):
        classification_artifact("digits", make_bypass(micro_backbone), ["a", "b"], micro_backbone)
    with pytest.raises(ArtifactError, match="labels must be distinct"):
        classification_artifact("digits", make_bypass(micro_backbone), ["a", "a", "b"], micro_backbone)
    with pytest.raises(ArtifactError, match="plain JSON"):
        classification_artifact("digits", make_bypass(micro_backbone), LABELS, micro_backbone,
                                {"loss": float("nan")})


def test_write_artifact_refuses_an_invalid_artifact(micro_backbone, tmp_path):
    bad = replace(make_artifact(micro_backbone), name="a/b")
    with pytest.raises(ArtifactError, match="not allowed"):
        write_artifact(bad, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,ok", [
    ("digits", True), ("vtab.cifar-100_v2", True), ("a", True), ("9", True), ("x" * 64, True),
    ("x" * 65, False), ("", False), ("../x", False), ("a/b", False), ("a\\b", False), ("..", False),
    ("a..b", False), (".hidden", False), ("-x", False), ("Digits", False), ("a b", False), ("a@1", False),
    ("a:b", False), ("digits\n", False), (None, False),
])
def test_name_rules(name, ok):
    assert is_valid_name(name) is ok
    if ok:
        assert NAME_PATTERN.fullmatch(name)


def test_diffusion_kind_without_its_module_is_a_clear_error(micro_backbone, monkeypatch):
    monkeypatch.setitem(sys.modules, "restuning.diffusion.bypass", None)  # import raises ModuleNotFoundError
    artifact = replace(make_artifact(micro_backbone), kind="diffusion", labels=[])
    with pytest.raises(ArtifactError, match="diffusion artifacts cannot be checked here"):
        decode_artifact(encode_artifact(artifact))


def test_diffusion_kind_uses_the_validator_registered_for_it(micro_backbone, monkeypatch):
    """The diffusion kind calls restuning.diffusion.bypass.expected_state_shapes(tuner, backbone) and checks shapes
    with it."""
    from restuning.errors import ConfigError

    calls = []

    def expected_state_shapes(tuner, backbone):
        calls.append((tuner, backbone["name"]))
        if tuner.get("broken"):
            raise ConfigError(["tuner: broken is not a setting"])
        if tuner.get("malformed"):
            return tuner["channels"]  # a validator tripping over bad JSON must not crash the caller
        return {"up.weight": (4, 2)}

    module = types.ModuleType("restuning.diffusion.bypass")
    module.expected_state_shapes = expected_state_shapes
    monkeypatch.setitem(sys.modules, "restuning.diffusion.bypass", module)
    base = replace(make_artifact(micro_backbone), kind="diffusion", labels=[], tuner={"groups": 2},
                   tensors={"up.weight": torch.ones(4, 2)})
    assert decode_artifact(encode_artifact(base)).kind == "diffusion"
    assert calls[-1] == ({"groups": 2}, "restune_vit_micro")
    with pytest.raises(ArtifactError, match=r"'up.weight' has shape \[2, 4\]"):
        decode_artifact(encode_artifact(replace(base, tensors={"up.weight": torch.ones(2, 4)})))
    with pytest.raises(ArtifactError, match="broken is not a setting"):
        decode_artifact(encode_artifact(replace(base, tuner={"broken": True})))
    with pytest.raises(ArtifactError, match=r"diffusion tuner config is invalid \(KeyError"):
        decode_artifact(encode_artifact(replace(base, tuner={"malformed": True})))


def test_build_tuner_builds_by_kind(micro_backbone):
    artifact = make_artifact(micro_backbone)
    assert type(build_tuner(artifact)).__name__ == "ResTuningBypass"
    with pytest.raises(ArtifactError, match="tuner: tuner has unknown keys"):  # built as what its kind says
        build_tuner(replace(artifact, kind="diffusion"))


def test_no_pickle_in_the_package():
    root = Path(__file__).resolve().parents[2] / "tuner_store"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), path
        assert "torch.load(" not in text, path
