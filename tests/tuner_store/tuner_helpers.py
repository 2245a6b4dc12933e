"""Artifacts and bad inputs shared by the tuner_store tests."""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import torch

LABELS = ["cat", "dog", "fox"]

# pickle.dumps({"weights": [1.0, 2.0]}, protocol=4), spelled out so that no test imports pickle.
PICKLE_BYTES = (
    b"\x80\x04\x95$\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x07weights\x94]\x94(G?\xf0\x00\x00\x00\x00\x00\x00"
    b"G@\x00\x00\x00\x00\x00\x00\x00es."
)


def make_bypass(backbone, *, seed: int = 0, num_classes: int = 3, dim: int = 4):
    from restuning.bypass import BypassConfig, build_bypass

    config = BypassConfig.create(backbone.info, num_classes=num_classes, dim=dim)
    bypass = build_bypass(config, backbone.embed_dim, seed=seed)
    # Trained tuners have λ away from 0.5 and non-zero biases; make that visible in round trips.
    with torch.no_grad():
        bypass.lambda_logits.uniform_(-1, 1, generator=torch.Generator().manual_seed(seed))
    return bypass


def make_artifact(backbone, name: str = "digits", *, seed: int = 0, labels=LABELS, metrics=None):
    from tuner_store import classification_artifact

    bypass = make_bypass(backbone, seed=seed, num_classes=len(labels))
    return classification_artifact(name, bypass, list(labels), backbone, metrics or {"val_acc": 0.5 + seed / 100})


def with_tensor(artifact, tensor_name: str, tensor: torch.Tensor | None):
    """A copy with one tensor replaced (None: removed)."""
    tensors = dict(artifact.tensors)
    if tensor is None:
        tensors.pop(tensor_name)
    else:
        tensors[tensor_name] = tensor
    return replace(artifact, tensors=tensors)


@dataclass
class BadInput:
    data: bytes
    message: str  # a fragment the error must contain
    put_kwargs: dict = field(default_factory=dict)
    max_bytes: int | None = None  # open the store with this artifact size limit


BAD_INPUT_IDS = [
    "truncated-data", "truncated-header", "random-bytes", "pickle-renamed", "torch-save-zip", "plain-safetensors",
    "wrong-shape", "missing-tensor", "nan", "inf", "int64", "labels-mismatch", "other-backbone",
    "name-dotdot", "name-slash", "name-uppercase", "oversized", "tampered-weights", "unknown-kind",
    "future-format",
]


def bad_inputs(good, other_fingerprint: str) -> dict[str, BadInput]:
    """Every kind of bad artifact the store must refuse, built from a good one."""
    from safetensors.torch import save

    from tuner_store import encode_artifact

    data = encode_artifact(good)
    head = good.tensors["head.weight"]
    bias = good.tensors["head.bias"]
    tampered = bytearray(data)
    tampered[-1] ^= 0x01  # lowest exponent bit of the last float: the value changes, stays finite

    def enc(artifact) -> bytes:
        return encode_artifact(artifact)

    cases = {
        "truncated-data": BadInput(data[:-64], "truncated or corrupt"),
        "truncated-header": BadInput(data[:40], "truncated one"),
        "random-bytes": BadInput(random.Random(0).randbytes(4096), "not a safetensors file"),
        "pickle-renamed": BadInput(PICKLE_BYTES, "Python pickle"),
        "torch-save-zip": BadInput(b"PK\x03\x04" + bytes(60), "zip archive (a torch.save checkpoint?)"),
        "plain-safetensors": BadInput(save({"w": torch.zeros(2)}), "no restune metadata"),
        "wrong-shape": BadInput(enc(with_tensor(good, "head.weight", head[:, :16].clone())),
                                f"'head.weight' has shape [3, 16]; the config and backbone imply [3, {head.shape[1]}]"),
        "missing-tensor": BadInput(enc(with_tensor(good, "lambda_logits", None)),
                                   "missing tensors the config requires: ['lambda_logits']"),
        "nan": BadInput(enc(with_tensor(good, "head.bias", bias.clone().index_fill_(0, torch.tensor([0]),
                                                                                    float("nan")))),
                        "non-finite values: head.bias (1 NaN, 0 Inf)"),
        "inf": BadInput(enc(with_tensor(good, "head.bias", bias.clone().fill_(float("inf")))),
                        "non-finite values: head.bias (0 NaN, 3 Inf)"),
        "int64": BadInput(enc(with_tensor(good, "head.bias", torch.zeros(3, dtype=torch.int64))),
                          "unsupported dtype: head.bias (int64); allowed dtypes: float32, float16, bfloat16"),
        "labels-mismatch": BadInput(enc(replace(good, labels=["cat", "dog"])), "2 labels for a head with 3 outputs"),
        "other-backbone": BadInput(data, f"fingerprint {other_fingerprint[:12]}",
                                   put_kwargs={"backbone_fingerprint": other_fingerprint}),
        "name-dotdot": BadInput(enc(replace(good, name="../x")), "name '../x' is not allowed"),
        "name-slash": BadInput(enc(replace(good, name="a/b")), "name 'a/b' is not allowed"),
        "name-uppercase": BadInput(enc(replace(good, name="Digits")), "name 'Digits' is not allowed"),
        "oversized": BadInput(data, f"{len(data):,} bytes, over the limit of {len(data) - 1:,} bytes",
                              max_bytes=len(data) - 1),
        "tampered-weights": BadInput(bytes(tampered), "weights sha256 mismatch"),
        "unknown-kind": BadInput(enc(replace(good, kind="segmentation")),
                                 "kind 'segmentation' is unknown; choose one of 'classification', 'diffusion'"),
        "future-format": BadInput(enc(replace(good, format_version=2)), "format_version 2 is not supported"),
    }
    assert sorted(cases) == sorted(BAD_INPUT_IDS)
    return cases
