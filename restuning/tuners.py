"""Res-Tuners: small token-wise modules placed beside a frozen operation (paper Eq. 7).

    x' = OP(x) + ResTuner(x)

Each module here computes the *residual branch* ResTuner(x) only. Inside the
bypass the frozen OP is the identity, so a bypass stage applies `x + ResTuner(x)`
(see `ResTuner.residual`); inside the backbone (Res-Tuning) the branch is added
to the output of MHA, FFN or the whole block.

Every tuner is token-wise: the output at token i depends only on the input at
token i. Res-Prefix and Res-Prompt attend from each token onto *learned* tokens
only, never onto other input tokens, which is what keeps them token-wise.

All three share one shape, which the multi-task engine and the Triton kernels
exploit:

    ResTuner(x) = act(x @ A + a) @ B + c

    adapter: A = W_down^T, a = b_down, act = GELU,     B = W_up^T, c = b_up
    prefix:  A = K_pre^T / sqrt(D), a = 0, act = softmax over the r slots, B = V_pre, c = 0
    prompt:  A = P^T / sqrt(D),     a = 0, act = softmax over the r slots, B = P,     c = 0

`two_layer_form()` returns (A, a, B, c, act).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from restuning.checks import is_positive_int
from restuning.errors import ConfigError, choices

TUNER_TYPES: tuple[str, ...] = ("adapter", "prefix", "prompt", "none")
Activation = Literal["gelu", "softmax"]


@dataclass(frozen=True)
class TwoLayerForm:
    """ResTuner(x) = act(x @ down_weight + down_bias) @ up_weight + up_bias."""

    down_weight: torch.Tensor  # [D, r]
    down_bias: torch.Tensor  # [r]
    up_weight: torch.Tensor  # [r, D]
    up_bias: torch.Tensor  # [D]
    activation: Activation


def apply_activation(h: torch.Tensor, activation: Activation) -> torch.Tensor:
    if activation == "gelu":
        return F.gelu(h)
    if activation == "softmax":
        return torch.softmax(h, dim=-1)
    raise ConfigError(f"unknown activation {activation!r}; choose one of 'gelu', 'softmax'")


class ResTuner(nn.Module):
    """Base class: forward(x) returns the residual branch for x of shape [..., D]."""

    tuner_type: str = "none"
    activation: Activation = "gelu"

    def __init__(self, embed_dim: int, dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.dim = dim

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The bypass stage: the frozen OP is the identity, so x + ResTuner(x)."""
        return x + self(x)

    def two_layer_form(self) -> TwoLayerForm:
        raise NotImplementedError


class NoTuner(ResTuner):
    """`none`: no learned branch, the stage passes its input through unchanged."""

    tuner_type = "none"

    def __init__(self, embed_dim: int, dim: int = 0):
        super().__init__(embed_dim, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ResAdapter(ResTuner):
    """Res-Adapter: W_up · GELU(W_down · x), hidden size `dim` (paper default 10)."""

    tuner_type = "adapter"
    activation: Activation = "gelu"

    def __init__(self, embed_dim: int, dim: int = 10, *, zero_init_last: bool = False):
        super().__init__(embed_dim, dim)
        self.down = nn.Linear(embed_dim, dim)
        self.up = nn.Linear(dim, embed_dim)
        # Initialisation of the public reference implementation (ms-swift ResAdapter).
        for linear in (self.down, self.up):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)
        if zero_init_last:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))

    def two_layer_form(self) -> TwoLayerForm:
        return TwoLayerForm(self.down.weight.t(), self.down.bias, self.up.weight.t(), self.up.bias, "gelu")


class ResPrefix(ResTuner):
    """Res-Prefix: Attn(x, K_pre, V_pre) with `dim` learned key/value tokens (paper Eq. 3, right term).

    The query is the token itself, so each token attends only onto the learned
    prefix: the unbound form of prefix tuning with the frozen W_q folded into K_pre.
    """

    tuner_type = "prefix"
    activation: Activation = "softmax"

    def __init__(self, embed_dim: int, dim: int = 10, *, zero_init_last: bool = False):
        super().__init__(embed_dim, dim)
        self.prefix_keys = nn.Parameter(torch.empty(dim, embed_dim))
        self.prefix_values = nn.Parameter(torch.empty(dim, embed_dim))
        nn.init.normal_(self.prefix_keys, std=0.02)
        if zero_init_last:
            nn.init.zeros_(self.prefix_values)
        else:
            nn.init.normal_(self.prefix_values, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = x @ self.prefix_keys.t() / math.sqrt(self.embed_dim)
        return torch.softmax(scores, dim=-1) @ self.prefix_values

    def two_layer_form(self) -> TwoLayerForm:
        zeros_r = self.prefix_keys.new_zeros(self.dim)
        zeros_d = self.prefix_values.new_zeros(self.embed_dim)
        return TwoLayerForm(
            self.prefix_keys.t() / math.sqrt(self.embed_dim), zeros_r, self.prefix_values, zeros_d, "softmax"
        )


class ResPrompt(ResTuner):
    """Res-Prompt: attention onto `dim` learned prompt tokens, keys = values = the prompts (Eq. 5)."""

    tuner_type = "prompt"
    activation: Activation = "softmax"

    def __init__(self, embed_dim: int, dim: int = 10, *, zero_init_last: bool = False):
        super().__init__(embed_dim, dim)
        self.prompt_tokens = nn.Parameter(torch.empty(dim, embed_dim))
        nn.init.normal_(self.prompt_tokens, std=0.02)
        # A zero prompt would also zero the keys, so "zero last" scales the values instead.
        self.value_scale = nn.Parameter(torch.zeros(())) if zero_init_last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = x @ self.prompt_tokens.t() / math.sqrt(self.embed_dim)
        out = torch.softmax(scores, dim=-1) @ self.prompt_tokens
        return out if self.value_scale is None else out * self.value_scale

    def two_layer_form(self) -> TwoLayerForm:
        values = self.prompt_tokens if self.value_scale is None else self.prompt_tokens * self.value_scale
        return TwoLayerForm(
            self.prompt_tokens.t() / math.sqrt(self.embed_dim),
            self.prompt_tokens.new_zeros(self.dim),
            values,
            self.prompt_tokens.new_zeros(self.embed_dim),
            "softmax",
        )


TUNER_REGISTRY: dict[str, type[ResTuner]] = {
    "adapter": ResAdapter,
    "prefix": ResPrefix,
    "prompt": ResPrompt,
    "none": NoTuner,
}


def validate_tuner(tuner_type: object, dim: object, *, where: str = "tuner") -> list[str]:
    """Problems with a (type, dim) pair, as messages naming the value and the choices."""
    problems: list[str] = []
    if tuner_type not in TUNER_REGISTRY:
        problems.append(f"{where}: unknown tuner type {tuner_type!r}; choose one of {choices(TUNER_TYPES)}")
    if tuner_type != "none":
        if not is_positive_int(dim):
            problems.append(f"{where}: dim must be a positive integer, got {dim!r}")
    return problems


def build_tuner(tuner_type: str, embed_dim: int, dim: int, *, zero_init_last: bool = False) -> ResTuner:
    problems = validate_tuner(tuner_type, dim)
    if problems:
        raise ConfigError(problems)
    cls = TUNER_REGISTRY[tuner_type]
    if cls is NoTuner:
        return NoTuner(embed_dim)
    return cls(embed_dim, dim, zero_init_last=zero_init_last)


def tuner_param_count(tuner_type: str, embed_dim: int, dim: int) -> int:
    """Trainable parameters of one tuner, without building it."""
    if tuner_type == "adapter":
        return 2 * embed_dim * dim + dim + embed_dim
    if tuner_type == "prefix":
        return 2 * dim * embed_dim
    if tuner_type == "prompt":
        return dim * embed_dim
    return 0
