"""Res-Tuning-Bypass style tuners on a frozen Stable Diffusion U-Net, and many styles in one batched pass.

Modules:
- `bypass`   the style tuner (UNetBypass), its config and `expected_state_shapes` (torch only);
- `routing`  many tuners on one batch, each sample through its own style;
- `unet`     the U-Net taps (forward hooks), the SD v1.5 config, the U-Net fingerprint;
- `loading`  a local diffusers directory (safetensors only) or `tiny-random`;
- `pipeline` StylePipeline.generate, GenerationLimits, GenerationInputError;
- `describe` trainable-parameter accounting for SD v1.5 dims (meta device).

Importing this package does not import diffusers or transformers (the tuner store calls
`expected_state_shapes` to validate artifacts); the pipeline names below load lazily.
"""
from __future__ import annotations

import importlib

from restuning.diffusion.bypass import (
    BYPASS_TYPE,
    UNetBypass,
    UNetBypassConfig,
    build_unet_bypass,
    bypass_from_state,
    expected_state_shapes,
)

_LAZY = {
    "StylePipeline": "restuning.diffusion.pipeline",
    "GenerationLimits": "restuning.diffusion.pipeline",
    "GenerationRequest": "restuning.diffusion.pipeline",
    "GenerationResult": "restuning.diffusion.pipeline",
    "GeneratedImage": "restuning.diffusion.pipeline",
    "GenerationInputError": "restuning.diffusion.pipeline",
    "DEFAULT_LIMITS": "restuning.diffusion.pipeline",
    "BASE_STYLE": "restuning.diffusion.pipeline",
    "RoutedBypass": "restuning.diffusion.routing",
    "TappedUNet": "restuning.diffusion.unet",
    "describe_diffusion": "restuning.diffusion.describe",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'restuning.diffusion' has no attribute {name!r}")


__all__ = ["BYPASS_TYPE", "UNetBypass", "UNetBypassConfig", "build_unet_bypass", "bypass_from_state",
           "expected_state_shapes", *_LAZY]
