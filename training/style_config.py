"""What `restune train style` takes, defined once: the config's fields are also its flags (restuning.options).

Kept apart from `training.style` (torch, diffusers) so the command line builds without them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from restuning.checks import is_positive_int
from restuning.errors import choices
from restuning.options import option
from tuner_store.artifact import name_problems

DEFAULT_PROMPT_TEMPLATE = "a photo in {style} style"
TRAIN_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class StyleTrainConfig:
    """`restune train style`: every field is also its flag (--field-name)."""

    images: str = option(help="folder of the style's images (read recursively)")
    style: str = option(help="style name = artifact name (a-z 0-9 . _ -)")
    prompt_template: str = option(DEFAULT_PROMPT_TEMPLATE,
                                  help="caption of every image; {style} is replaced by the style name, {caption} "
                                       "by the image's own caption (the .txt file of the same name beside it)")
    diffusion_model: str = option("tiny-random", help="'tiny-trained', 'tiny-random' or a local diffusers directory")
    steps: int | None = option(None, help="optimizer steps (overrides --epochs)")
    epochs: int = option(10, help="epochs over the images (Table 11: 10)")
    batch_size: int = option(8, help="Table 11: 8")
    resolution: int | None = option(None, help="square training size (default: the model's, 512 for SD)")
    lr: float = option(1e-4, help="constant AdamW learning rate (Table 11: 1e-4)")
    # Table 11 names AdamW without a decay; this is AdamW's usual default
    weight_decay: float = option(1e-2, help="AdamW weight decay")
    snr_gamma: float = option(5.0, help="models that predict the clean image (tiny-trained): each timestep's loss "
                                        "weighted by min(SNR, gamma) + 1, as the base model trained (0: unweighted); "
                                        "ε- and v-predicting models (SD) are always unweighted")
    caption_dropout: float = option(0.0, help="share of training images trained on the empty prompt instead of "
                                              "their caption, so the tuner also learns the unconditional branch "
                                              "that classifier-free guidance runs (0: off)")
    flip: bool = option(True, help="random horizontal flips (Table 11); --no-flip when captions say left or right")
    seed: int = option(0, help="seed of the tuner's initialisation, the image order and the noise")
    device: str = option("auto", help="auto, cpu, cuda, cuda:1 …")
    dtype: str = option("float32", help="float32, or bfloat16 (CUDA, autocast) for the frozen parts")
    groups: int = option(4, help="adapter channel groups (reference default 4)")
    scale_factor: int = option(2, help="adapter hidden = scale_factor x C/groups")
    conv_groups: int = option(32, help="groups of the zero-init 3x3 convs")

    def problems(self) -> list[str]:
        problems = []
        if not isinstance(self.style, str) or not self.style:
            problems.append("--style must be a non-empty name")
        else:
            problems += [f"--style: {p}" for p in name_problems(self.style)]
            if self.style == "base":
                problems.append("--style 'base' is reserved for the plain U-Net (no tuner); pick another name")
        try:
            self.prompt_template.format(style="x", caption="y")
        except (KeyError, IndexError, ValueError) as exc:
            problems.append(f"--prompt-template {self.prompt_template!r} is not a valid template ({exc!r}); "
                            "use {style} for the style name, {caption} for the image's caption and {{ }} for "
                            "literal braces")
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if not is_positive_int(value):
                problems.append(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            problems.append(f"--steps must be a positive integer, got {self.steps!r}")
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 8):
            problems.append(f"--resolution must be an integer >= 8, got {self.resolution!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"--lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            problems.append(f"--weight-decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.snr_gamma, (int, float)) and math.isfinite(self.snr_gamma) and self.snr_gamma >= 0):
            problems.append(f"--snr-gamma must be a number >= 0, got {self.snr_gamma!r}")
        if not (isinstance(self.caption_dropout, (int, float)) and 0 <= self.caption_dropout < 1):
            problems.append(f"--caption-dropout must be in [0, 1), got {self.caption_dropout!r}")
        if self.dtype not in TRAIN_DTYPES:
            problems.append(f"--dtype {self.dtype!r} is not supported for training; choose one of {choices(TRAIN_DTYPES)}")
        return problems
