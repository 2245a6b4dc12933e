"""Res-Tuning-Bypass (paper Fig. 3c, Eq. 8): a chain of Res-Tuners beside a frozen backbone.

    b_0 = x_0
    b_l = λ_l · H_l(x_l) + (1 − λ_l) · V_l(b_{l−1}),   λ_l = sigmoid(θ_l), θ_l = 0 at init
    logits = head(pool(final_norm(b_L)))

H_l ("horizontal") reads the backbone's block output, V_l ("vertical") reads the
bypass. Each stage is a residual around the identity: H(x) = x + ResTuner(x).
Nothing flows back into the backbone, so its forward needs no autograd graph, and
one backbone pass serves any number of bypass heads.

`layers` picks which block outputs the chain taps (1-based); with layers 1→k the
chain has k stages and b_k replaces the input of the backbone's final norm.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from restuning.backbones.base import POOLINGS, Backbone, BackboneInfo
from restuning.checks import is_positive_int
from restuning.errors import ConfigError, InputError, choices
from restuning.layers import parse_layers
from restuning.tuners import ResTuner, build_tuner, validate_tuner


@dataclass(frozen=True)
class TunerSpec:
    type: str = "adapter"
    dim: int = 10

    def to_json(self) -> dict:
        return {"type": self.type, "dim": self.dim if self.type != "none" else 0}


@dataclass(frozen=True)
class BypassConfig:
    """Structure of one bypass head; `layers` are 1-based block numbers."""

    num_classes: int
    layers: tuple[int, ...]
    horizontal: TunerSpec = field(default_factory=TunerSpec)
    vertical: TunerSpec = field(default_factory=TunerSpec)
    pooling: str = "token"

    @classmethod
    def create(
        cls,
        info: BackboneInfo,
        *,
        num_classes: int,
        horizontal: str = "adapter",
        vertical: str = "adapter",
        dim: int = 10,
        horizontal_dim: int | None = None,
        vertical_dim: int | None = None,
        layers: str | Sequence[int] | None = "all",
        pooling: str | None = None,
    ) -> "BypassConfig":
        """Build and validate a config against a backbone; raises one ConfigError listing every problem."""
        problems: list[str] = []
        h_dim = dim if horizontal_dim is None else horizontal_dim
        v_dim = dim if vertical_dim is None else vertical_dim
        problems += validate_tuner(horizontal, h_dim, where="horizontal")
        problems += validate_tuner(vertical, v_dim, where="vertical")
        if not is_positive_int(num_classes):
            problems.append(f"num_classes must be a positive integer, got {num_classes!r}")
        pooling = info.pooling if pooling is None else pooling
        if pooling not in POOLINGS:
            problems.append(f"unknown pooling {pooling!r}; choose one of {choices(POOLINGS)}")
        try:
            parsed = parse_layers(layers, info.depth)
        except ConfigError as exc:
            problems += exc.problems
            parsed = ()
        if problems:
            raise ConfigError(problems)
        return cls(
            num_classes=num_classes,
            layers=parsed,
            horizontal=TunerSpec(horizontal, h_dim if horizontal != "none" else 0),
            vertical=TunerSpec(vertical, v_dim if vertical != "none" else 0),
            pooling=pooling,
        )

    def to_json(self) -> dict:
        out = asdict(self)
        out["layers"] = list(self.layers)
        out["horizontal"] = self.horizontal.to_json()
        out["vertical"] = self.vertical.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict, info: BackboneInfo) -> "BypassConfig":
        """Parse and validate the JSON form (as stored in artifacts) against a backbone."""
        problems: list[str] = []
        if not isinstance(data, dict):
            raise ConfigError(f"bypass config must be a JSON object, got {type(data).__name__}")
        for key in ("num_classes", "layers", "horizontal", "vertical", "pooling"):
            if key not in data:
                problems.append(f"bypass config is missing {key!r}")
        for key in ("horizontal", "vertical"):
            if key in data and not isinstance(data[key], dict):
                problems.append(f"bypass config {key!r} must be an object with 'type' and 'dim'")
        if problems:
            raise ConfigError(problems)
        h, v = data["horizontal"], data["vertical"]
        return cls.create(
            info,
            num_classes=data["num_classes"],
            horizontal=h.get("type"),
            vertical=v.get("type"),
            horizontal_dim=h.get("dim"),
            vertical_dim=v.get("dim"),
            layers=data["layers"],
            pooling=data["pooling"],
        )


class ResTuningBypass(nn.Module):
    """One task's bypass: H and V tuners per tapped layer, a λ per layer, and a task Linear head."""

    def __init__(self, config: BypassConfig, embed_dim: int):
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim
        h, v = config.horizontal, config.vertical
        self.horizontal = nn.ModuleList(build_tuner(h.type, embed_dim, h.dim) for _ in config.layers)
        self.vertical = nn.ModuleList(build_tuner(v.type, embed_dim, v.dim) for _ in config.layers)
        # sigmoid(0) = 0.5: the paper's initial λ.
        self.lambda_logits = nn.Parameter(torch.zeros(len(config.layers)))
        self.head = nn.Linear(embed_dim, config.num_classes)

    @property
    def lambdas(self) -> torch.Tensor:
        return torch.sigmoid(self.lambda_logits)

    def stages(self) -> list[tuple[int, ResTuner, ResTuner]]:
        return list(zip(self.config.layers, self.horizontal, self.vertical))

    def bypass(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """b_L from [x_0 … x_L] (each [B, N, D], already cut to the pooling's token positions)."""
        if len(tokens) <= max(self.config.layers):
            raise InputError(
                f"the bypass taps block {max(self.config.layers)} but only {len(tokens) - 1} block outputs were given"
            )
        lambdas = self.lambdas
        b = tokens[0]
        for i, (layer, horizontal, vertical) in enumerate(self.stages()):
            lam = lambdas[i].to(b.dtype)
            b = lam * horizontal.residual(tokens[layer]) + (1 - lam) * vertical.residual(b)
        return b

    def forward_selected(self, tokens: Sequence[torch.Tensor], backbone: Backbone) -> torch.Tensor:
        """Logits [B, C] from tokens already cut to `backbone.token_positions(pooling)`."""
        return self.head(backbone.pool(self.bypass(tokens)))

    def forward(self, tokens: Sequence[torch.Tensor], backbone: Backbone) -> torch.Tensor:
        """Logits [B, C] from the backbone's full features [x_0 … x_L]."""
        positions = backbone.token_positions(self.config.pooling)
        return self.forward_selected([t[:, positions] for t in tokens], backbone)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


@functools.lru_cache(maxsize=64)
def _meta_template(config: BypassConfig, embed_dim: int) -> ResTuningBypass:
    # Building on the meta device costs tens of milliseconds (every op goes through the device mode), more than a
    # real build; a server validating thousands of tuners of a few structures builds each structure once.
    with torch.device("meta"):
        return ResTuningBypass(config, embed_dim)


@functools.lru_cache(maxsize=64)
def _state_shapes(config: BypassConfig, embed_dim: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((name, tuple(t.shape)) for name, t in _meta_template(config, embed_dim).state_dict().items())


def expected_state_shapes(config: BypassConfig, embed_dim: int) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a bypass with this structure (built once per structure, on the meta device)."""
    return dict(_state_shapes(config, embed_dim))


def _clone_structure(module: nn.Module) -> nn.Module:
    """The same module tree with its own dicts of parameters, buffers and children (the meta tensors themselves
    are shared: they hold nothing and are replaced, not written). copy.deepcopy of a bypass took about 7 ms in
    Python's generic copying; a server loading tuners on a miss pays that on every load."""
    clone = object.__new__(type(module))
    clone.__dict__ = {k: (type(v)(v) if isinstance(v, (dict, set)) else v) for k, v in module.__dict__.items()}
    clone._modules = {k: None if child is None else _clone_structure(child) for k, child in module._modules.items()}
    return clone


def empty_bypass(config: BypassConfig, embed_dim: int) -> ResTuningBypass:
    """A bypass with this structure whose tensors have no storage (meta), to be given real ones with
    `assign_state` (or `load_state_dict(..., assign=True)`): no memory, time or global random numbers go to an
    initialisation that would be overwritten."""
    return _clone_structure(_meta_template(config, embed_dim))


def assign_state(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """Give `module` these tensors as its parameters and buffers, without copying them. The names and shapes
    must already have been checked against the structure (`expected_state_shapes`): this is the fast path of
    `load_state_dict(strict=True, assign=True)` for a tree of plain parameters (a tenth of its time)."""
    for key, tensor in tensors.items():
        path, _, leaf = key.rpartition(".")
        owner = module.get_submodule(path)
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=owner._parameters[leaf].requires_grad)
        else:
            owner._buffers[leaf] = tensor
    return module


def build_bypass(config: BypassConfig, embed_dim: int, *, seed: int | None = None) -> ResTuningBypass:
    """A new, randomly initialised bypass; a seed makes the init reproducible."""
    if seed is None:
        return ResTuningBypass(config, embed_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResTuningBypass(config, embed_dim)
