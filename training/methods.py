"""What each `--method` trains, built from one backbone; all four share the trainer and the data.

- bypass     Res-Tuning-Bypass (paper Fig. 3c, Eq. 8): H/V Res-Tuners + λ + a Linear head beside the
             frozen backbone; the backbone runs without an autograd graph. Servable artifact.
- linear     linear probing: frozen backbone, a Linear head on the backbone's own pooled final features,
             head(pool(final_norm(x_L))). It is stored as a bypass tapping only block L with no tuners and
             λ_L = sigmoid(40), which is exactly 1.0 in float32 and float64, so b = 1·x_L + 0·x_0 = x_L
             bit for bit: the same artifact format, servable, and exactly linear probing. (A bypass with
             `none` tuners on every layer is *not* linear probing: its λ mix ensembles all layers, the
             paper's Table 3b "no tuners" row; train that with `--method bypass --horizontal none
             --vertical none`.) λ is frozen; only the head trains.
- full       full fine-tuning: a copy of the whole ViT plus a Linear head, every weight trains. Saved as a
             plain safetensors file (the model's weights + head), not servable by the bypass server.
- restuning  Res-Tuning (Fig. 3b): Res-Tuners beside MHA/FFN/block inside a frozen copy of the ViT;
             gradients flow through the backbone. Saves its tuners + head; not servable by the bypass server.

bypass and linear read only backbone features, so they can train from a feature cache and share one
backbone pass across tasks (`FeatureHeads`); full and restuning read images (`ImageHeads`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from restuning.backbones.base import POOLINGS, Backbone
from restuning.bypass import BypassConfig, ResTuningBypass, build_bypass
from restuning.errors import ConfigError, choices
from restuning.res_tuning import ResTuningConfig, ResTuningViT
from training.train_config import FEATURE_METHODS, METHODS

SERVABLE_METHODS: tuple[str, ...] = ("bypass", "linear")
LINEAR_LAMBDA_LOGIT = 40.0  # sigmoid(40) == 1.0 exactly in float32 and float64


@dataclass(frozen=True)
class MethodSpec:
    """The structure a method trains; tuner fields are those of `restune describe`."""

    method: str = "bypass"
    horizontal: str = "adapter"
    vertical: str = "adapter"
    dim: int = 10
    layers: str = "all"
    pooling: str | None = None  # None: the backbone's own rule
    mha: str = "adapter"  # restuning only
    ffn: str = "adapter"
    block: str = "none"
    extra: dict = field(default_factory=dict)

    def problems(self) -> list[str]:
        problems = []
        if self.method not in METHODS:
            problems.append(f"unknown method {self.method!r}; choose one of {choices(METHODS)}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            problems.append(f"unknown pooling {self.pooling!r}; choose one of {choices(POOLINGS)}")
        return problems

    def to_json(self) -> dict:
        out = {"method": self.method, "pooling": self.pooling}
        if self.method == "bypass":
            out.update(horizontal=self.horizontal, vertical=self.vertical, dim=self.dim, layers=self.layers)
        elif self.method == "restuning":
            out.update(mha=self.mha, ffn=self.ffn, block=self.block, dim=self.dim, layers=self.layers)
        return out


def bypass_config(spec: MethodSpec, backbone: Backbone, num_classes: int) -> BypassConfig:
    if spec.method == "linear":
        return BypassConfig.create(backbone.info, num_classes=num_classes, horizontal="none", vertical="none",
                                   layers=[backbone.depth], pooling=spec.pooling)
    return BypassConfig.create(backbone.info, num_classes=num_classes, horizontal=spec.horizontal,
                               vertical=spec.vertical, dim=spec.dim, layers=spec.layers, pooling=spec.pooling)


def build_feature_head(spec: MethodSpec, backbone: Backbone, num_classes: int, *, seed: int) -> ResTuningBypass:
    head = build_bypass(bypass_config(spec, backbone, num_classes), backbone.embed_dim, seed=seed)
    if spec.method == "linear":
        with torch.no_grad():
            head.lambda_logits.fill_(LINEAR_LAMBDA_LOGIT)
        head.lambda_logits.requires_grad_(False)
    return head


class FeatureHeads(nn.Module):
    """One bypass head per task over the same backbone features: forward(tokens) -> {task: logits}.

    `tokens[l]` is x_l cut to the heads' token positions ([B, N_sel, D]) or None for a layer no head taps.
    The backbone is referenced, not registered: its weights are frozen and belong to no optimizer,
    checkpoint or DDP bucket.

    Heads sit in a ModuleList by position, never under their task names: a ModuleDict key becomes an
    attribute, so valid tuner names such as `train`, `eval`, `to` or `a.b` would clash or be refused.
    """

    def __init__(self, heads: dict[str, ResTuningBypass], backbone: Backbone):
        super().__init__()
        poolings = {h.config.pooling for h in heads.values()}
        if len(poolings) != 1:
            raise ConfigError(f"heads trained from one feature pass need one pooling rule, got {sorted(poolings)}")
        self.task_names: tuple[str, ...] = tuple(heads)
        self.heads = nn.ModuleList(heads.values())
        self.__dict__["backbone"] = backbone
        self.pooling = poolings.pop()

    def head(self, task: str) -> ResTuningBypass:
        return self.heads[self.task_names.index(task)]

    @property
    def layers(self) -> tuple[int, ...]:
        """Backbone features the heads read: x_0 and every tapped block output."""
        return tuple(sorted({0}.union(*(h.config.layers for h in self.heads))))

    def positions(self) -> slice:
        return self.backbone.token_positions(self.pooling)

    def forward(self, tokens: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        return {name: head.forward_selected(tokens, self.backbone) for name, head in zip(self.task_names, self.heads)}

    def pooled(self, tokens: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """What each task's Linear head reads: pool(final_norm(b_L)), [B, D] (the linear probe's input)."""
        return {name: self.backbone.pool(head.bypass(tokens)) for name, head in zip(self.task_names, self.heads)}


class FullFineTune(nn.Module):
    """A trainable copy of the whole ViT and a Linear head on its pooled final features."""

    def __init__(self, backbone: Backbone, num_classes: int, pooling: str):
        super().__init__()
        self.model = copy.deepcopy(backbone.model)
        self.model.requires_grad_(True)
        self.positions = backbone.token_positions(pooling)
        self.head = nn.Linear(backbone.embed_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.model.forward_features(images)[:, self.positions]  # embeddings, blocks, final norm
        pooled = x[:, 0] if x.shape[1] == 1 else x.mean(dim=1)
        return self.head(self.model.fc_norm(pooled))


class ImageHeads(nn.Module):
    """A model that reads images (full fine-tuning, Res-Tuning): forward(images) -> {task: logits}."""

    def __init__(self, task: str, model: nn.Module):
        super().__init__()
        self.task = task
        self.model = model

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.task: self.model(images)}


def build_model(spec: MethodSpec, backbone: Backbone, tasks: list[tuple[str, int]], *, seed: int) -> nn.Module:
    """FeatureHeads (bypass, linear: any number of tasks) or ImageHeads (full, restuning: one task)."""
    problems = spec.problems()
    if spec.method not in FEATURE_METHODS and len(tasks) != 1:
        problems.append(f"--method {spec.method} trains one task at a time, got {len(tasks)}")
    if problems:
        raise ConfigError(problems)
    if spec.method in FEATURE_METHODS:
        heads = {name: build_feature_head(spec, backbone, n, seed=seed + i) for i, (name, n) in enumerate(tasks)}
        return FeatureHeads(heads, backbone)
    (name, num_classes), = tasks
    pooling = spec.pooling or backbone.info.pooling
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.method == "full":
            model = FullFineTune(backbone, num_classes, pooling)
        else:
            config = ResTuningConfig.create(backbone, num_classes=num_classes, mha=spec.mha, ffn=spec.ffn,
                                            block=spec.block, dim=spec.dim, layers=spec.layers, pooling=pooling)
            model = ResTuningViT(backbone, config)
    return ImageHeads(name, model)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that training changes (what a checkpoint and a baseline file store)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable_parameters(model))
