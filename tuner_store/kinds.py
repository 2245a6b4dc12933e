"""Tuner kinds: what each kind of artifact holds, and how it is checked, built and described.

A kind is one entry of `KINDS`. The artifact format, the stores, the CLI and the server look a kind up here and
never branch on its name; adding a kind means adding an entry here (and, for serving it, one in
`server.kinds`).

torch and restuning's model modules are imported inside the functions that build or check tensors: tuner_store
installs without them (the client extra).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from restuning.checks import is_int, is_number
from restuning.errors import ConfigError, choices
from restuning.state_shapes import shape_problems
from tuner_store.errors import ArtifactError

# (tuner JSON, backbone JSON, labels) -> (tensor name -> shape, problems); may raise ConfigError.
ShapesOf = Callable[[dict, dict, list], "tuple[dict[str, tuple[int, ...]], list[str]]"]


class UnsupportedKindError(Exception):
    """The kind is known but this installation cannot check or build it (a dependency is missing)."""


@dataclass(frozen=True)
class TunerKind:
    name: str
    purpose: str  # what a tuner of this kind does, for listings and errors
    expected_shapes: ShapesOf
    build: Callable[[object], object]  # a decoded artifact -> its torch module, weights loaded, eval mode, CPU
    describe: Callable[[dict], str]  # the artifact's config -> one line about its structure


# -- classification: a Res-Tuning-Bypass head on a frozen ViT --------------------------------------------

_BACKBONE_INFO_FIELDS = (
    "name", "embed_dim", "depth", "num_tokens", "num_prefix_tokens", "image_size", "pooling", "mean", "std",
    "weights",
)


def backbone_info_from_json(backbone: dict):
    """The BackboneInfo a classification artifact records; ConfigError listing every problem."""
    from restuning.backbones.base import POOLINGS, BackboneInfo  # torch: see the module docstring

    problems = [f"backbone is missing {key!r}" for key in _BACKBONE_INFO_FIELDS if key not in backbone]
    for key in ("embed_dim", "depth", "num_tokens"):
        if key in backbone and not (is_int(backbone[key]) and backbone[key] > 0):
            problems.append(f"backbone {key} must be a positive integer, got {backbone[key]!r}")
    if "num_prefix_tokens" in backbone and not (is_int(backbone["num_prefix_tokens"])
                                                  and backbone["num_prefix_tokens"] >= 0):
        problems.append(f"backbone num_prefix_tokens must be an integer >= 0, got {backbone['num_prefix_tokens']!r}")
    size = backbone.get("image_size")
    if "image_size" in backbone and not (isinstance(size, list) and len(size) == 2
                                         and all(is_int(v) and v > 0 for v in size)):
        problems.append(f"backbone image_size must be [height, width], got {size!r}")
    if "pooling" in backbone and backbone["pooling"] not in POOLINGS:
        problems.append(f"backbone pooling {backbone['pooling']!r} is unknown; choose one of {choices(POOLINGS)}")
    for key in ("mean", "std"):
        value = backbone.get(key)
        if key in backbone and not (isinstance(value, list) and len(value) == 3 and all(map(is_number, value))):
            problems.append(f"backbone {key} must be 3 numbers, got {value!r}")
    for key in ("name", "weights"):
        if key in backbone and not isinstance(backbone[key], str):
            problems.append(f"backbone {key} must be a string, got {backbone[key]!r}")
    if problems:
        raise ConfigError(problems)
    return BackboneInfo(
        name=backbone["name"],
        embed_dim=backbone["embed_dim"],
        depth=backbone["depth"],
        num_tokens=backbone["num_tokens"],
        num_prefix_tokens=backbone["num_prefix_tokens"],
        image_size=tuple(backbone["image_size"]),
        pooling=backbone["pooling"],
        mean=tuple(backbone["mean"]),
        std=tuple(backbone["std"]),
        weights=backbone["weights"],
    )


def _bypass_config(tuner: dict, backbone: dict):
    from restuning.bypass import BypassConfig  # torch: see the module docstring

    info = backbone_info_from_json(backbone)
    try:
        return BypassConfig.from_json(tuner, info), info
    except ConfigError as exc:
        raise ConfigError([f"tuner: {p}" for p in exc.problems]) from None


def _classification_shapes(tuner: dict, backbone: dict, labels: list) -> tuple[dict, list[str]]:
    from restuning.bypass import expected_state_shapes  # torch: see the module docstring

    config, info = _bypass_config(tuner, backbone)
    problems = []
    if len(labels) != config.num_classes:
        problems.append(
            f"{len(labels)} labels for a head with {config.num_classes} outputs (tuner num_classes); "
            "give exactly one label per class"
        )
    return expected_state_shapes(config, info.embed_dim), problems


def _build_classification(artifact):
    import torch  # see the module docstring

    from restuning.bypass import assign_state, empty_bypass, expected_state_shapes  # torch: see the module docstring

    try:
        config, info = _bypass_config(artifact.tuner, artifact.backbone)
    except ConfigError as exc:
        raise ArtifactError(exc.problems, name=artifact.name) from None
    problems = shape_problems(expected_state_shapes(config, info.embed_dim), artifact.tensors)
    if problems:
        raise ArtifactError(problems, name=artifact.name)
    # no storage until the artifact's tensors are assigned (a server loads tuners beside other threads' work)
    module = empty_bypass(config, info.embed_dim)
    # float32 whatever the artifact stores (half-precision artifacts are allowed), as a fresh module would be
    assign_state(module, {k: v.to(torch.float32) for k, v in artifact.tensors.items()})
    return module.eval()


def _describe_classification(config: dict) -> str:
    tuner = config.get("tuner", {})
    sides = "/".join(f"{tuner.get(side, {}).get('type')}({tuner.get(side, {}).get('dim')})"
                     for side in ("horizontal", "vertical"))
    layers = tuner.get("layers", [])
    span = f"{layers[0]}-{layers[-1]}" if layers else "-"
    return (f"bypass H/V {sides} on blocks {span}, {tuner.get('pooling')} pooling, "
            f"{len(config.get('labels', []))} classes")


CLASSIFICATION = TunerKind(
    name="classification",
    purpose="a classification head on the frozen backbone's features (POST /v1/classify)",
    expected_shapes=_classification_shapes,
    build=_build_classification,
    describe=_describe_classification,
)


# -- diffusion: a style tuner on a frozen Stable Diffusion U-Net -----------------------------------------------

def _diffusion_shapes(tuner: dict, backbone: dict, labels: list) -> tuple[dict, list[str]]:
    try:
        from restuning.diffusion.bypass import expected_state_shapes  # torch: see the module docstring
    except ImportError as exc:
        raise UnsupportedKindError(f"diffusion artifacts cannot be checked here ({exc})") from None
    try:
        shapes = expected_state_shapes(tuner, backbone)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        # the checker choked on malformed JSON: a bad artifact, not a server error
        raise ConfigError(f"diffusion tuner config is invalid ({type(exc).__name__}: {exc})") from None
    return {k: tuple(v) for k, v in shapes.items()}, []


def _build_diffusion(artifact):
    from restuning.diffusion.bypass import bypass_from_state  # torch: see the module docstring

    try:
        return bypass_from_state(artifact.tuner, artifact.tensors, artifact.backbone)
    except ConfigError as exc:
        raise ArtifactError(exc.problems, name=artifact.name) from None


def _describe_diffusion(config: dict) -> str:
    tuner = config.get("tuner", {})
    return (f"U-Net style bypass, channels {tuner.get('channels')}, {tuner.get('groups')} groups, "
            f"scale factor {tuner.get('scale_factor')}")


DIFFUSION = TunerKind(
    name="diffusion",
    purpose="a style tuner on the frozen diffusion U-Net (POST /v1/generate)",
    expected_shapes=_diffusion_shapes,
    build=_build_diffusion,
    describe=_describe_diffusion,
)


KINDS: dict[str, TunerKind] = {kind.name: kind for kind in (CLASSIFICATION, DIFFUSION)}


def build_tuner(artifact):
    """The artifact's torch module (weights loaded, eval mode, on the CPU), whatever its kind."""
    return KINDS[artifact.kind].build(artifact)
