"""Parameter accounting for `restune describe`, without loading pretrained weights."""
from __future__ import annotations

from restuning.backbones import describe_backbone, meta_backbone
from restuning.bypass import BypassConfig, build_bypass
from restuning.errors import ConfigError, choices
from restuning.layers import format_layers
from restuning.res_tuning import ResTuningConfig, ResTuningViT

METHODS = ("bypass", "restuning", "linear", "full")


def describe(
    backbone: str,
    *,
    method: str = "bypass",
    horizontal: str = "adapter",
    vertical: str = "adapter",
    dim: int = 10,
    layers: str = "all",
    num_classes: int = 100,
    pooling: str | None = None,
    mha: str | None = "adapter",
    ffn: str | None = "adapter",
    block: str | None = None,
) -> dict:
    """Trainable and backbone parameter counts for one task's tuner on `backbone`."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {choices(METHODS)}")
    info, backbone_params = describe_backbone(backbone)
    head_params = info.embed_dim * num_classes + num_classes if isinstance(num_classes, int) else 0
    out: dict = {"backbone": backbone, "method": method, "embed_dim": info.embed_dim, "depth": info.depth,
                 "backbone_params": backbone_params}
    if method == "bypass":
        config = BypassConfig.create(
            info, num_classes=num_classes, horizontal=horizontal, vertical=vertical, dim=dim, layers=layers,
            pooling=pooling,
        )
        model = build_bypass(config, info.embed_dim, seed=0)
        breakdown = {
            "horizontal": sum(p.numel() for p in model.horizontal.parameters()),
            "vertical": sum(p.numel() for p in model.vertical.parameters()),
            "lambda": model.lambda_logits.numel(),
            "head": sum(p.numel() for p in model.head.parameters()),
        }
        out.update(config=config.to_json(), layers=format_layers(config.layers), breakdown=breakdown,
                   trainable_params=model.num_trainable())
    elif method == "restuning":
        structure = meta_backbone(backbone)
        config = ResTuningConfig.create(structure, num_classes=num_classes, mha=mha, ffn=ffn, block=block,
                                        dim=dim, layers=layers, pooling=pooling)
        model = ResTuningViT(structure, config)
        out.update(layers=format_layers(config.layers), trainable_params=sum(p.numel() for p in model.trainable_parameters()))
    elif method == "linear":
        out.update(trainable_params=head_params)
    else:
        out.update(trainable_params=backbone_params + head_params)
    out["trainable_params_millions"] = round(out["trainable_params"] / 1e6, 3)
    out["trainable_fraction_of_backbone"] = round(out["trainable_params"] / backbone_params, 6)
    return out
