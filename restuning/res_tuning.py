"""Res-Tuning (paper Fig. 3b): Res-Tuners in parallel to MHA, FFN and/or the whole block.

    MHA'   = MHA(norm1(x)) + R_mha(norm1(x))
    FFN'   = FFN(norm2(h)) + R_ffn(norm2(h))
    Block' = Block(x)      + R_block(x)

Single/Dual/Tri-Res-Tuner (Table 2) are the choices of which of the three carry
a tuner. The backbone stays frozen but gradients flow *through* it to the tuners
of earlier blocks, which is what the bypass avoids. Here it is a training
baseline. Tuners start with a zero last layer so training starts at the backbone.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from restuning.backbones.base import POOLINGS, Backbone
from restuning.bypass import TunerSpec
from restuning.errors import ConfigError, choices
from restuning.layers import parse_layers
from restuning.tuners import build_tuner, validate_tuner

POSITIONS = ("mha", "ffn", "block")


@dataclass(frozen=True)
class ResTuningConfig:
    num_classes: int
    layers: tuple[int, ...]
    mha: TunerSpec | None = TunerSpec("adapter", 10)
    ffn: TunerSpec | None = TunerSpec("adapter", 10)
    block: TunerSpec | None = None
    pooling: str = "token"

    @classmethod
    def create(
        cls,
        backbone: Backbone,
        *,
        num_classes: int,
        mha: str | None = "adapter",
        ffn: str | None = "adapter",
        block: str | None = None,
        dim: int = 10,
        layers: str | None = "all",
        pooling: str | None = None,
    ) -> "ResTuningConfig":
        problems: list[str] = []
        specs: dict[str, TunerSpec | None] = {}
        for where, kind in (("mha", mha), ("ffn", ffn), ("block", block)):
            if kind in (None, "none"):
                specs[where] = None
                continue
            problems += validate_tuner(kind, dim, where=where)
            specs[where] = TunerSpec(kind, dim)
        if not isinstance(num_classes, int) or num_classes < 1:
            problems.append(f"num_classes must be a positive integer, got {num_classes!r}")
        pooling = backbone.info.pooling if pooling is None else pooling
        if pooling not in POOLINGS:
            problems.append(f"unknown pooling {pooling!r}; choose one of {choices(POOLINGS)}")
        try:
            parsed = parse_layers(layers, backbone.depth)
        except ConfigError as exc:
            problems += exc.problems
            parsed = ()
        if problems:
            raise ConfigError(problems)
        return cls(num_classes=num_classes, layers=parsed, pooling=pooling, **specs)


class _TunedBlock(nn.Module):
    def __init__(self, block: nn.Module, embed_dim: int, config: ResTuningConfig):
        super().__init__()
        for attr in ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"):
            if not hasattr(block, attr):
                raise ConfigError(f"Res-Tuning needs a timm pre-norm ViT Block; {type(block).__name__} lacks {attr!r}")
        self.block = block
        self.tuners = nn.ModuleDict()
        for where in POSITIONS:
            spec = getattr(config, where)
            if spec is not None:
                self.tuners[where] = build_tuner(spec.type, embed_dim, spec.dim, zero_init_last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blk = self.block
        h = blk.norm1(x)
        attn = blk.ls1(blk.attn(h))
        if "mha" in self.tuners:
            attn = attn + self.tuners["mha"](h)
        y = x + blk.drop_path1(attn)
        h2 = blk.norm2(y)
        ffn = blk.ls2(blk.mlp(h2))
        if "ffn" in self.tuners:
            ffn = ffn + self.tuners["ffn"](h2)
        y = y + blk.drop_path2(ffn)
        if "block" in self.tuners:
            y = y + self.tuners["block"](x)
        return y


class ResTuningViT(nn.Module):
    """A frozen timm ViT with Res-Tuners inside the chosen blocks, plus a task head."""

    def __init__(self, backbone: Backbone, config: ResTuningConfig):
        super().__init__()
        self.config = config
        model = copy.deepcopy(backbone.model)
        model.requires_grad_(False)
        model.eval()
        wanted = set(config.layers)
        model.blocks = nn.Sequential(
            *(
                _TunedBlock(blk, backbone.embed_dim, config) if i + 1 in wanted else blk
                for i, blk in enumerate(model.blocks)
            )
        )
        self.model = model
        self.backbone_info = backbone.info
        self.positions = backbone.token_positions(config.pooling)
        self.head = nn.Linear(backbone.embed_dim, config.num_classes)

    def train(self, mode: bool = True) -> "ResTuningViT":
        super().train(mode)
        self.model.eval()  # frozen: no dropout / drop-path in the backbone
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))
        x = m.blocks(x)
        x = m.norm(x)[:, self.positions]
        pooled = x[:, 0] if x.shape[1] == 1 else x.mean(dim=1)
        return self.head(m.fc_norm(pooled))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
