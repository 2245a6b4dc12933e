"""The frozen U-Net with its bypass taps: one forward captures the mid_block input, the mid_block output and
every up block's output, and may replace the input of conv_norm_out with a bypass output.

The taps are forward hooks on diffusers' own sub-modules, so the U-Net runs its own, unmodified
forward: with no bypass the result is bit for bit diffusers' result. Hook state lives in a
thread-local, so concurrent calls from different threads do not see each other's taps.

Nothing here imports diffusers at module import (the tuner store and `restune --help` stay fast);
`sd15_unet_structure()` and `unet_fingerprint()` do, lazily.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from restuning.errors import ConfigError, InputError

# The public Stable Diffusion v1.5 U-Net config (runwayml/stable-diffusion-v1-5, unet/config.json).
SD15_UNET_CONFIG: dict = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
# Pixel-space factor of the SD v1.5 VAE (4 resolutions: 2**3) and its latent scaling.
SD15_VAE_SCALE_FACTOR = 8
SD15_SCALING_FACTOR = 0.18215

TAP_NAMES_HEAD = ("mid_block.input", "mid_block.output")


def tap_names(num_up_blocks: int) -> list[str]:
    return [*TAP_NAMES_HEAD, *(f"up_blocks.{i}.output" for i in range(num_up_blocks))]


def layout_problems(config: dict) -> list[str]:
    """Why a U-Net config is not a Stable Diffusion 1.x/2.x-style UNet2DConditionModel the bypass can tap."""
    problems = []
    boc = config.get("block_out_channels")
    down, up = config.get("down_block_types"), config.get("up_block_types")
    if not isinstance(boc, (list, tuple)) or len(boc) < 2:
        problems.append(f"block_out_channels must list at least 2 resolutions, got {boc!r}")
    if not isinstance(down, (list, tuple)) or not isinstance(up, (list, tuple)) or len(down) != len(up):
        problems.append(f"down_block_types and up_block_types must have the same length, got {down!r} / {up!r}")
    elif isinstance(boc, (list, tuple)) and len(up) != len(boc):
        problems.append(f"{len(up)} up blocks but {len(boc)} block_out_channels")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") is None:
        problems.append("the U-Net has no mid_block to tap (mid_block_type is None)")
    if config.get("norm_num_groups", 32) is None:
        problems.append("the U-Net has no conv_norm_out (norm_num_groups is None); the bypass replaces its input")
    for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim"):
        # "text" pools the prompt's own hidden states into the timestep embedding: no extra inputs
        if config.get(key) is not None and (key, config[key]) != ("addition_embed_type", "text"):
            problems.append(f"{key}={config[key]!r} needs extra conditioning inputs (SDXL-style); "
                            "only Stable Diffusion 1.x/2.x layouts are supported")
    return problems


def tap_channels(config: dict) -> list[int]:
    """Channels of the taps [mid in, mid out, up_0 … up_{n-1}] from a U-Net config."""
    boc = list(config["block_out_channels"])
    return [boc[-1], boc[-1], *reversed(boc)]


def sd15_unet_structure():
    """The SD v1.5 U-Net built on the meta device (no memory, no weights): for parameter counts and shapes."""
    from diffusers import UNet2DConditionModel  # slow to import (seconds); only models need it

    with torch.device("meta"):
        return UNet2DConditionModel(**SD15_UNET_CONFIG)


def unet_fingerprint(unet: nn.Module) -> str:
    """sha256 over the U-Net's config (public keys) and every weight as float32, in name order.

    Taken on the weights as loaded (before any dtype cast), so a tuner trained in float32 on CPU
    and one served in float16 on a GPU name the same U-Net.
    """
    digest = hashlib.sha256()
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=list).encode())
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


Bypass = Callable[[Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class _CallState:
    bypass: Bypass | None
    taps: list = field(default_factory=list)


class TappedUNet:
    """A frozen diffusers UNet2DConditionModel whose forward exposes the bypass taps.

    `__call__(sample, timestep, encoder_hidden_states, bypass=None)` returns the noise prediction;
    with `bypass`, conv_norm_out receives `bypass(taps)` instead of the last up block's output.
    `capture(...)` returns (prediction, taps) for tests and shape reports.
    """

    def __init__(self, unet: nn.Module):
        problems = layout_problems(dict(unet.config))
        if problems:
            raise ConfigError(problems)
        self.unet = unet
        unet.requires_grad_(False)
        unet.eval()
        self.num_up_blocks = len(unet.up_blocks)
        self.tap_names = tap_names(self.num_up_blocks)
        self.tap_channels = tap_channels(dict(unet.config))
        self._local = threading.local()
        unet.mid_block.register_forward_pre_hook(self._mid_input_hook, with_kwargs=True)
        unet.mid_block.register_forward_hook(self._output_hook)
        for block in unet.up_blocks:
            block.register_forward_hook(self._output_hook)
        unet.conv_norm_out.register_forward_pre_hook(self._replace_hook)

    # -- hooks: each checks for an active call of this thread, so plain unet(...) calls are untouched --

    def _state(self) -> _CallState | None:
        return getattr(self._local, "state", None)

    def _mid_input_hook(self, module, args, kwargs):
        state = self._state()
        if state is not None:
            state.taps.append(args[0] if args else kwargs["hidden_states"])
        return None

    def _output_hook(self, module, args, output):
        state = self._state()
        if state is not None:
            state.taps.append(output[0] if isinstance(output, (tuple, list)) else output)
        return None

    def _replace_hook(self, module, args):
        state = self._state()
        if state is None or state.bypass is None:
            return None
        if len(state.taps) != len(self.tap_names):
            raise InputError(f"captured {len(state.taps)} taps, expected {len(self.tap_names)} ({self.tap_names})")
        x = args[0]
        new = state.bypass(state.taps)
        if new.shape != x.shape:
            raise InputError(f"the bypass returned shape {list(new.shape)}; conv_norm_out expects {list(x.shape)}")
        return (new.to(x.dtype),)

    # -- calls ----------------------------------------------------------------------------------

    def _run(self, sample, timestep, encoder_hidden_states, bypass) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if getattr(self._local, "state", None) is not None:
            raise RuntimeError("TappedUNet is not re-entrant within one thread")
        self._local.state = state = _CallState(bypass)
        try:
            out = self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        finally:
            self._local.state = None
        return out, state.taps

    def __call__(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *,
                 bypass: Bypass | None = None) -> torch.Tensor:
        return self._run(sample, timestep, encoder_hidden_states, bypass)[0]

    def capture(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *,
                bypass: Bypass | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self._run(sample, timestep, encoder_hidden_states, bypass)

    @property
    def config(self):
        return self.unet.config

    def num_params(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())
