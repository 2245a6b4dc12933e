"""The frozen backbone interface: one forward returns every layer's tokens.

Modelled on timm's `forward_intermediates`, but it always returns the tokens
entering the first block (x_0) and the output of every block (x_1 … x_L), and it
never builds an autograd graph: nothing flows back into a frozen backbone.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from restuning.errors import ConfigError, InputError, choices

Pooling = Literal["token", "avg"]
POOLINGS: tuple[str, ...] = ("token", "avg")


@dataclass(frozen=True)
class BackboneInfo:
    """What a tuner needs to know about the backbone it was trained on."""

    name: str
    embed_dim: int
    depth: int
    num_tokens: int  # tokens per image, prefix tokens included
    num_prefix_tokens: int  # class (and register) tokens in front of the patch tokens
    image_size: tuple[int, int]
    pooling: Pooling  # the model's own pooling rule
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # "pretrained", "random:<seed>" or "file:<basename>"

    def to_json(self) -> dict:
        return asdict(self)


class Backbone(nn.Module, ABC):
    """A frozen feature extractor with a final norm and a pooling rule."""

    info: BackboneInfo

    @property
    def embed_dim(self) -> int:
        return self.info.embed_dim

    @property
    def depth(self) -> int:
        return self.info.depth

    @abstractmethod
    def _forward_tokens(self, images: torch.Tensor) -> list[torch.Tensor]:
        """x_0 … x_L, each [B, N, D]; called under no_grad."""

    @abstractmethod
    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen norm applied to the last tokens before pooling; x [..., N, D]."""

    @abstractmethod
    def post_pool_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen norm applied after pooling (timm's fc_norm; identity for most ViTs); x [..., D]."""

    @torch.no_grad()
    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """One frozen forward. images [B, 3, H, W] -> [x_0, x_1, …, x_L], each [B, N, D].

        no_grad rather than inference_mode: trainers feed these tensors into a
        bypass that does build a graph (of its own parameters only).
        """
        self.check_images(images)
        return self._forward_tokens(images)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(images)

    # -- pooling --------------------------------------------------------------------------------

    def token_positions(self, pooling: Pooling) -> slice:
        """Token positions a pooling rule reads: the class token, or every patch token."""
        if pooling == "token":
            return slice(0, 1)
        if pooling == "avg":
            return slice(self.info.num_prefix_tokens, self.info.num_tokens)
        raise ConfigError(f"unknown pooling {pooling!r}; choose one of {choices(POOLINGS)}")

    def pool(self, selected: torch.Tensor) -> torch.Tensor:
        """Final norm, pooling and post-pool norm over tokens already cut to `token_positions`.

        selected [..., N_sel, D] -> [..., D]. The final norm is token-wise, so
        normalising only the kept positions equals normalising all of them.
        """
        normed = self.final_norm(selected)
        pooled = normed[..., 0, :] if normed.shape[-2] == 1 else normed.mean(dim=-2)
        return self.post_pool_norm(pooled)

    # -- input checks ---------------------------------------------------------------------------

    def check_images(self, images: object) -> None:
        h, w = self.info.image_size
        if not isinstance(images, torch.Tensor):
            raise InputError(f"images must be a torch.Tensor of shape [B, 3, {h}, {w}], got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (h, w):
            raise InputError(
                f"images must have shape [B, 3, {h}, {w}] for backbone {self.info.name!r}, got {list(images.shape)}"
            )
        if images.shape[0] == 0:
            raise InputError("images must hold at least one image (batch size 0 given)")
        if not images.is_floating_point():
            raise InputError(
                f"images must be a floating-point tensor (normalised pixels), got dtype {images.dtype}; "
                "use restuning.preprocess.ImagePreprocessor to convert uint8 images"
            )

    # -- identity -------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """sha256 over the architecture description and every weight, stable across runs and devices."""
        cached = getattr(self, "_fingerprint", None)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        arch = {k: v for k, v in self.info.to_json().items() if k != "weights"}
        digest.update(json.dumps(arch, sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
