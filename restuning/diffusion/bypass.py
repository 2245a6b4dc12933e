"""Res-Tuning-Bypass on a frozen Stable Diffusion U-Net (paper §5, appendix C.2 Fig. 9).

Taps (one U-Net forward, see `restuning.diffusion.unet.TappedUNet`):

    t_0 = input of mid_block        t_1 = output of mid_block
    t_2 … t_{n+1} = outputs of up_blocks.0 … up_blocks.{n-1}

The bypass is a chain of n + 1 stages (5 for SD v1.5), one per tapped output:

    b = t_0
    for stage i = 0 … n:
        b = H_i(t_{i+1}) + V_i(b)                         # Res-Tuners on feature maps
        if i < n: b = conv3x3_i(nearest_upsample(b, size of t_{i+2}))   # zero-initialised conv
    b replaces the input of the U-Net's conv_norm_out (which is t_{n+1} in the base model)

H and V are *group adapters* (the public reference implementation's ResGroupAdapter): the C
channels of every pixel are split into `groups` groups of C/groups channels, and one small
adapter `x + W_up·GELU(W_down·x)` (hidden size scale_factor·C/groups) is shared by all groups
and pixels. That is a token-wise Res-Adapter over rows of C/groups channels, which is what lets
many styles share one routed kernel (`restuning.kernels.routed_adapter`).

Why an untrained bypass reproduces the base U-Net *exactly*: every stage but the last ends in a
zero-initialised conv, so the last stage's V reads b = 0; the last stage's adapters have
zero-initialised up-projections, so H(t) = t + 0 and V(0) = 0 + 0. The result is t_{n+1} + 0 + 0,
bit for bit the tensor conv_norm_out receives without a bypass.

Differences from the paper and the reference, on purpose:
- H and V are summed without the paper's λ (Eq. 8). With b = λ·H + (1 − λ)·V the last stage
  would give λ·t_{n+1} at init and break the exact zero-init property; the reference sums too.
- Channel groups are contiguous (like GroupNorm), the reference interleaves them
  (channel c·groups + g). It is a fixed channel permutation: same function class, same parameter
  count, but weights are not interchangeable with ms-swift checkpoints.
- The 3×3 convs between resolutions are grouped (`conv_groups`, default 32). Dense 3×3 convs
  (the reference's SD test config) cost 38.7M parameters on SD v1.5, ten times the paper's 3.76M
  for the whole bypass; see `restuning.diffusion.describe` for the accounting.

This module imports only torch, so the tuner store can validate artifacts without diffusers.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from restuning.checks import is_positive_int
from restuning.errors import ConfigError, InputError
from restuning.state_shapes import shape_problems

BYPASS_TYPE = "unet_bypass"
FORMAT = 1
TUNER_KEYS = ("type", "format", "channels", "groups", "scale_factor", "conv_groups", "training")
DEFAULT_GROUPS = 4  # reference ResGroupAdapter default `head`
DEFAULT_SCALE_FACTOR = 2  # reference ResGroupAdapter default `scale_factor`
DEFAULT_CONV_GROUPS = 32  # = SD's GroupNorm groups; divides 320/640/1280 and the tiny model's 32/64


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class UNetBypassConfig:
    """Structure of one style tuner. `channels` are the tap channels [mid in, mid out, up_0 … up_{n-1}]."""

    channels: tuple[int, ...]
    groups: int = DEFAULT_GROUPS
    scale_factor: int = DEFAULT_SCALE_FACTOR
    conv_groups: int = DEFAULT_CONV_GROUPS

    @property
    def num_stages(self) -> int:
        return len(self.channels) - 1

    def stage_channels(self, i: int) -> int:
        return self.channels[i + 1]

    def group_dim(self, i: int) -> int:
        """Width of one adapter row at stage i: C_i / groups."""
        return self.stage_channels(i) // self.groups

    def hidden_dim(self, i: int) -> int:
        return self.group_dim(i) * self.scale_factor

    @staticmethod
    def problems_of(channels: object, groups: object, scale_factor: object, conv_groups: object) -> list[str]:
        """Every problem of a structure, each naming the value and what would be valid."""
        problems: list[str] = []
        chans_ok = (isinstance(channels, (list, tuple)) and len(channels) >= 2
                    and all(is_positive_int(c) for c in channels))
        if not chans_ok:
            problems.append(
                "channels must be a list of at least 2 positive integers (tap channels: mid_block input, mid_block "
                f"output, then each up block's output), got {channels!r}"
            )
        elif channels[0] != channels[1]:
            problems.append(
                f"channels[0] (mid_block input, {channels[0]}) must equal channels[1] (mid_block output, "
                f"{channels[1]}): the first stage's vertical tuner reads the mid_block input"
            )
        for key, value in (("groups", groups), ("scale_factor", scale_factor), ("conv_groups", conv_groups)):
            if not is_positive_int(value):
                problems.append(f"{key} must be a positive integer, got {value!r}")
        if chans_ok and is_positive_int(groups):
            stage = list(channels[1:])
            bad = sorted({c for c in stage if c % groups})
            if bad:
                common = _divisors(math.gcd(*stage))
                problems.append(
                    f"groups {groups} does not divide the tap channels {bad}; valid choices: {common}"
                )
        if chans_ok and is_positive_int(conv_groups) and len(channels) > 2:
            # conv i maps stage i's channels to stage i+1's; a grouped conv needs both divisible.
            pairs = list(zip(channels[1:-1], channels[2:]))
            bad_pairs = [(a, b) for a, b in pairs if a % conv_groups or b % conv_groups]
            if bad_pairs:
                common = _divisors(math.gcd(*[c for pair in pairs for c in pair]))
                problems.append(
                    f"conv_groups {conv_groups} does not divide the channels of the convs {bad_pairs}; "
                    f"valid choices: {common}"
                )
        return problems

    @classmethod
    def create(
        cls,
        channels: Sequence[int],
        *,
        groups: int = DEFAULT_GROUPS,
        scale_factor: int = DEFAULT_SCALE_FACTOR,
        conv_groups: int = DEFAULT_CONV_GROUPS,
    ) -> "UNetBypassConfig":
        chans = list(channels) if isinstance(channels, (list, tuple)) else channels
        problems = cls.problems_of(chans, groups, scale_factor, conv_groups)
        if problems:
            raise ConfigError(problems)
        return cls(tuple(chans), groups, scale_factor, conv_groups)

    def to_json(self) -> dict:
        return {"type": BYPASS_TYPE, "format": FORMAT, "channels": list(self.channels), "groups": self.groups,
                "scale_factor": self.scale_factor, "conv_groups": self.conv_groups}

    @classmethod
    def from_json(cls, data: object) -> "UNetBypassConfig":
        """Parse the artifact's `tuner` object; one ConfigError lists every problem."""
        if not isinstance(data, dict):
            raise ConfigError(f"tuner must be a JSON object, got {type(data).__name__}")
        problems: list[str] = []
        unknown = sorted(set(data) - set(TUNER_KEYS))
        if unknown:
            problems.append(f"tuner has unknown keys {unknown}; valid keys: {', '.join(TUNER_KEYS)}")
        if data.get("type") != BYPASS_TYPE:
            problems.append(f"tuner type must be {BYPASS_TYPE!r}, got {data.get('type')!r}")
        if data.get("format") != FORMAT:
            problems.append(f"tuner format {data.get('format')!r} is not supported; supported: {FORMAT}")
        missing = [k for k in ("channels", "groups", "scale_factor", "conv_groups") if k not in data]
        if missing:
            problems.append(f"tuner is missing {missing}")
        if "training" in data and not isinstance(data["training"], dict):
            problems.append("tuner.training must be a JSON object")
        if not missing:
            problems += cls.problems_of(data["channels"], data["groups"], data["scale_factor"], data["conv_groups"])
        if problems:
            raise ConfigError(problems)
        return cls(tuple(data["channels"]), data["groups"], data["scale_factor"], data["conv_groups"])

    def num_params(self) -> dict[str, int]:
        """Trainable parameters by part, computed from the structure (no module built)."""
        adapters = 0
        for i in range(self.num_stages):
            c, r = self.group_dim(i), self.hidden_dim(i)
            adapters += 2 * (c * r + r + r * c + c)  # H and V: down (weight + bias), up (weight + bias)
        convs = sum(
            self.channels[i + 2] * (self.channels[i + 1] // self.conv_groups) * 9 + self.channels[i + 2]
            for i in range(self.num_stages - 1)
        )
        return {"adapters": adapters, "upsample_convs": convs, "total": adapters + convs}


class GroupAdapter(nn.Module):
    """Res-Adapter over channel groups of a feature map: rows of C/groups channels, one shared adapter.

    forward(x [B, C, H, W]) = x + adapter(x), the adapter applied to every row
    x[b, g·c:(g+1)·c, h, w] (c = C/groups). `to_rows` gives the [B·H·W·groups, c] row view the
    routed kernel consumes.
    """

    def __init__(self, channels: int, groups: int, scale_factor: int, *, zero_init_last: bool = False):
        super().__init__()
        self.channels, self.groups = channels, groups
        dim = channels // groups
        self.down = nn.Linear(dim, dim * scale_factor)
        self.up = nn.Linear(dim * scale_factor, dim)
        # Reference ResGroupAdapter init: PyTorch's default kaiming-uniform weights, biases ~ N(0, 1).
        for linear in (self.down, self.up):
            nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
            nn.init.normal_(linear.bias)
        if zero_init_last:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def to_rows(self, x: torch.Tensor) -> torch.Tensor:
        return to_rows(x, self.groups)

    def branch(self, rows: torch.Tensor) -> torch.Tensor:
        """The learned residual on rows [M, c]."""
        return self.up(F.gelu(self.down(rows)))

    def residual_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return rows + self.branch(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_rows(self.residual_rows(self.to_rows(x)), x.shape)


def to_rows(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, C, H, W] -> [B·H·W·groups, C/groups]; contiguous channel groups, pixel-major rows."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * h * w * groups, c // groups)


def from_rows(rows: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of `to_rows` for a feature map of `shape` [B, C, H, W]."""
    b, c, h, w = shape
    return rows.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()


class ZeroConvUpsample(nn.Module):
    """Nearest up-sampling to the next tap's size, then a zero-initialised (grouped) 3×3 conv."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, groups=groups)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.conv(upsample_nearest(x, size))


def upsample_nearest(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # Equal sizes (up_blocks.2 -> up_blocks.3 in SD) need no copy: nearest to the same size is the identity.
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="nearest")


class BypassStage(nn.Module):
    def __init__(self, config: UNetBypassConfig, i: int):
        super().__init__()
        c = config.stage_channels(i)
        last = i == config.num_stages - 1
        self.horizontal = GroupAdapter(c, config.groups, config.scale_factor, zero_init_last=last)
        self.vertical = GroupAdapter(c, config.groups, config.scale_factor, zero_init_last=last)
        self.upsample = None if last else ZeroConvUpsample(c, config.stage_channels(i + 1), config.conv_groups)


class UNetBypass(nn.Module):
    """One style's Res-Tuning-Bypass over the taps of a frozen U-Net."""

    def __init__(self, config: UNetBypassConfig):
        super().__init__()
        self.config = config
        self.stages = nn.ModuleList(BypassStage(config, i) for i in range(config.num_stages))

    def check_taps(self, taps: Sequence[torch.Tensor]) -> None:
        chans = [t.shape[1] if t.dim() == 4 else None for t in taps]
        if len(taps) != len(self.config.channels) or chans != list(self.config.channels):
            raise InputError(
                f"the bypass expects {len(self.config.channels)} feature maps with channels "
                f"{list(self.config.channels)}, got {len(taps)} with channels {chans}"
            )

    def forward(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """b_L [B, C_out, H, W] from the taps [mid in, mid out, up_0 … up_{n-1}] (each [B, C, H, W])."""
        self.check_taps(taps)
        b = taps[0]
        groups = self.config.groups
        for i, stage in enumerate(self.stages):
            x = taps[i + 1]
            # H(x) + V(b), both in row space, so the map is permuted back to NCHW once per stage.
            rows = stage.horizontal.residual_rows(to_rows(x, groups)) + stage.vertical.residual_rows(to_rows(b, groups))
            b = from_rows(rows, x.shape)
            if stage.upsample is not None:
                b = stage.upsample(b, taps[i + 2].shape[-2:])
        return b

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_unet_bypass(config: UNetBypassConfig, *, seed: int | None = None) -> UNetBypass:
    """A new bypass (zero-initialised output); a seed makes the init reproducible without touching global RNG."""
    if seed is None:
        return UNetBypass(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNetBypass(config)


def state_shapes(config: UNetBypassConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a bypass with this structure (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        module = UNetBypass(config)
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def expected_state_shapes(tuner: dict, backbone: dict) -> dict[str, tuple[int, ...]]:
    """The tensors a `diffusion` artifact must hold; called by the tuner store to validate artifacts.

    Raises one ConfigError listing every problem of the tuner config, and a mismatch between the
    tuner's channels and the backbone's recorded `tap_channels` (when the backbone records them).
    """
    problems: list[str] = []
    config = None
    try:
        config = UNetBypassConfig.from_json(tuner)
    except ConfigError as exc:
        problems += [f"tuner: {p}" for p in exc.problems]
    if not isinstance(backbone, dict):
        problems.append(f"backbone must be a JSON object, got {type(backbone).__name__}")
    elif config is not None and "tap_channels" in backbone:
        taps = backbone["tap_channels"]
        if not isinstance(taps, list) or list(config.channels) != taps:
            problems.append(
                f"the tuner's channels {list(config.channels)} do not match the U-Net's tap channels {taps!r} "
                f"(backbone {backbone.get('name')!r})"
            )
    if problems:
        raise ConfigError(problems)
    return state_shapes(config)


def bypass_from_state(tuner: dict, tensors: Mapping[str, torch.Tensor], backbone: dict | None = None) -> UNetBypass:
    """A UNetBypass with the artifact's weights loaded (float32 on CPU, eval mode); ConfigError on any mismatch."""
    problems = shape_problems(expected_state_shapes(tuner, backbone if backbone is not None else {}), tensors)
    if problems:
        raise ConfigError(problems)
    config = UNetBypassConfig.from_json(tuner)
    with torch.device("meta"):
        module = UNetBypass(config)
    module.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in tensors.items()}, strict=True,
                           assign=True)
    return module.eval()
