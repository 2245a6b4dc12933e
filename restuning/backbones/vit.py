"""Any timm Vision Transformer as a frozen, one-pass backbone."""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from restuning.backbones.base import Backbone, BackboneInfo
from restuning.errors import ConfigError


class TimmViTBackbone(Backbone):
    """Wraps a timm `VisionTransformer`; its classifier head is dropped, every block is frozen."""

    def __init__(self, model: nn.Module, *, name: str, weights: str):
        super().__init__()

        if not isinstance(model, VisionTransformer):
            raise ConfigError(f"backbone {name!r} is a {type(model).__name__}, not a timm VisionTransformer")
        if getattr(model, "attn_pool", None) is not None or model.global_pool not in ("token", "avg"):
            raise ConfigError(
                f"backbone {name!r} pools with {model.global_pool!r}; supported pooling rules: 'token', 'avg'"
            )
        if getattr(model, "dynamic_img_size", False):
            raise ConfigError(f"backbone {name!r} uses dynamic image sizes, which a fixed token layout cannot serve")
        model.reset_classifier(0)
        model.eval()
        model.requires_grad_(False)
        self.model = model
        cfg = getattr(model, "pretrained_cfg", None) or {}
        grid = model.patch_embed.grid_size
        num_prefix = int(model.num_prefix_tokens)
        img_size = tuple(int(s) for s in model.patch_embed.img_size)
        self.info = BackboneInfo(
            name=name,
            embed_dim=int(model.embed_dim),
            depth=len(model.blocks),
            num_tokens=num_prefix + int(grid[0] * grid[1]),
            num_prefix_tokens=num_prefix,
            image_size=(img_size[0], img_size[1]),
            pooling=model.global_pool,
            mean=tuple(float(m) for m in cfg.get("mean", (0.5, 0.5, 0.5))),
            std=tuple(float(s) for s in cfg.get("std", (0.5, 0.5, 0.5))),
            weights=weights,
        )

    def train(self, mode: bool = True) -> "TimmViTBackbone":
        # Frozen means frozen: dropout and drop-path stay off even inside a training loop.
        return super().train(False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """x_0: patch embeddings + class token + position embeddings, [B, N, D]."""
        m = self.model
        x = m.patch_embed(images)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    @property
    def blocks(self) -> nn.Sequential:
        return self.model.blocks

    def _forward_tokens(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.embed(images)
        tokens = [x]
        for block in self.model.blocks:
            x = block(x)
            tokens.append(x)
        return tokens

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def post_pool_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.fc_norm(x)

