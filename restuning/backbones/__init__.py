"""Backbone registry: any timm ViT by name, plus tiny configs built in code for tests.

Weights:
- "random" or "random:SEED": deterministic random init (fixed seed, default 0), for tests and offline demos;
- "pretrained": timm's pretrained weights as safetensors from the Hugging Face hub (online or the local HF cache);
- "auto": pretrained from the local HF cache when it is there, else random (the log says which);
- a path to a local .safetensors file holding the model's state dict.
Nothing is ever unpickled.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from restuning.backbones.base import POOLINGS, Backbone, BackboneInfo, Pooling
from restuning.backbones.vit import TimmViTBackbone
from restuning.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "vit_tiny_patch16_224"
PAPER_BACKBONE = "vit_base_patch16_224"


@dataclass(frozen=True)
class InCodeViT:
    """A ViT configuration built in code (no timm registry entry, no pretrained weights)."""

    kwargs: dict = field(default_factory=dict)


# Tiny configurations for fast tests; names start with "restune_" so they never clash with timm's.
IN_CODE_VITS: dict[str, InCodeViT] = {
    "restune_vit_micro": InCodeViT(
        dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0, class_token=True)
    ),
    "restune_vit_micro_avg": InCodeViT(
        dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3, mlp_ratio=2.0, global_pool="avg")
    ),
}


def _unknown_backbone(name: str) -> ConfigError:
    examples = ", ".join(sorted(IN_CODE_VITS) + [DEFAULT_BACKBONE, PAPER_BACKBONE, "vit_small_patch16_224"])
    return ConfigError(
        f"unknown backbone {name!r}; choose a timm ViT name (see `timm.list_models('vit_*')`, e.g. {examples})"
    )


def _build_model(name: str, *, meta: bool = False):
    with torch.device("meta") if meta else nullcontext():
        if name in IN_CODE_VITS:
            return VisionTransformer(num_classes=0, **IN_CODE_VITS[name].kwargs)
        if name not in timm.list_models("vit_*") and name.split(".")[0] not in timm.list_models("vit_*"):
            raise _unknown_backbone(name)
        return timm.create_model(name, pretrained=False, num_classes=0)


def parse_weights(weights: str) -> tuple[str, object]:
    """'random[:SEED]' | 'pretrained' | 'auto' | path.safetensors -> (kind, arg)."""
    if weights == "random" or weights.startswith("random:"):
        seed_text = weights.partition(":")[2] or "0"
        try:
            return "random", int(seed_text)
        except ValueError:
            raise ConfigError(f"weights {weights!r}: the seed after 'random:' must be an integer") from None
    if weights in ("pretrained", "auto"):
        return weights, None
    path = Path(weights)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise ConfigError(f"weights file {weights!r} does not exist")
        return "file", path
    raise ConfigError(
        f"unknown weights {weights!r}; choose 'pretrained', 'random', 'random:SEED', 'auto' or a .safetensors path"
    )


def _pretrained_state_dict(name: str, *, local_only: bool) -> dict[str, torch.Tensor]:
    """timm's pretrained weights, fetched as safetensors only (never a pickle)."""
    from huggingface_hub import hf_hub_download  # only pretrained weights need the hub client (timm brings it)

    if name in IN_CODE_VITS:
        raise ConfigError(f"backbone {name!r} is built in code and has no pretrained weights; use weights='random'")
    cfg = timm.models.get_pretrained_cfg(name) or timm.models.get_pretrained_cfg(name.split(".")[0])
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ConfigError(f"backbone {name!r} has no pretrained weights on the Hugging Face hub")
    path = hf_hub_download(hub_id, "model.safetensors", local_files_only=local_only)
    return load_file(path)


def _load_into(model, state: dict[str, torch.Tensor], source: str) -> None:
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ConfigError(
            f"weights {source} do not fit the backbone: missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    weights: str = "random",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Backbone:
    """Build a frozen backbone; its fingerprint is computed in float32 before any dtype cast."""
    kind, arg = parse_weights(weights)
    state = None
    if kind == "auto":
        try:
            state = _pretrained_state_dict(name, local_only=True)
            kind = "pretrained"
        except ConfigError:
            raise
        except Exception as exc:  # nothing in the local HF cache: fall back, loudly
            log.warning(
                "no pretrained weights for %s in the local Hugging Face cache (%s); "
                "using RANDOM weights with seed 0 (offline demo mode)",
                name,
                type(exc).__name__,
            )
            kind, arg = "random", 0
    if kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(arg))
            model = _build_model(name)
        label = f"random:{arg}"
    elif kind == "file":
        model = _build_model(name)
        _load_into(model, load_file(str(arg)), f"file {arg}")
        label = f"file:{Path(arg).name}"
    else:
        model = _build_model(name)
        if state is None:
            state = _pretrained_state_dict(name, local_only=False)
        _load_into(model, state, "pretrained")
        label = "pretrained"
    backbone = TimmViTBackbone(model, name=name, weights=label)
    backbone.fingerprint()
    return backbone.to(device=device, dtype=dtype)


def meta_backbone(name: str) -> TimmViTBackbone:
    """The backbone's structure on the meta device: shapes and counts, no memory, no weights."""
    return TimmViTBackbone(_build_model(name, meta=True), name=name, weights="none")


def describe_backbone(name: str) -> tuple[BackboneInfo, int]:
    """Architecture facts and parameter count without allocating weights."""
    backbone = meta_backbone(name)
    return backbone.info, backbone.num_params()


__all__ = [
    "Backbone",
    "BackboneInfo",
    "DEFAULT_BACKBONE",
    "PAPER_BACKBONE",
    "POOLINGS",
    "Pooling",
    "create_backbone",
    "describe_backbone",
    "parse_weights",
    "TimmViTBackbone",
    "meta_backbone",
]
