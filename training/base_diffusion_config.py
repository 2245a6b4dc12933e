"""What `restune train base-diffusion` takes, defined once: the config's fields are also its flags.

Kept apart from `training.base_diffusion` (torch, diffusers) so the command line builds without them.
The defaults are the recipe of the committed `tiny-trained` model (its `training.json` records them).
"""
from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass

from restuning.checks import is_positive_int
from restuning.options import option


@dataclass
class BaseDiffusionConfig:
    """`restune train base-diffusion`: every field is also its flag (--field-name)."""

    steps: int = option(1700, help="optimizer steps")
    batch_size: int = option(64, help="scenes per step (a fresh batch every step)")
    lr: float = option(2e-3, help="peak AdamW learning rate (linear warm-up, then cosine decay to a tenth)")
    warmup_steps: int = option(100, help="linear learning-rate warm-up")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    ema_decay: float = option(0.999, help="decay of the exponential moving average of the weights that is saved")
    snr_gamma: float = option(5.0, help="each timestep's loss is weighted by min(SNR, gamma) + 1, normalised over "
                                        "the batch (0: unweighted)")
    caption_dropout: float = option(0.1, help="share of captions replaced by the empty prompt (what "
                                              "classifier-free guidance runs as the unconditional branch)")
    seed: int = option(0, help="seed of the initialisation, the scenes, the noise and the timesteps")
    threads: int | None = option(None, help="torch CPU threads (default: torch's)")

    def problems(self) -> list[str]:
        problems = []
        for key in ("steps", "batch_size"):
            value = getattr(self, key)
            if not is_positive_int(value):
                problems.append(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            problems.append(f"--warmup-steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"--lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            problems.append(f"--weight-decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            problems.append(f"--ema-decay must be in [0, 1), got {self.ema_decay!r}")
        if not (isinstance(self.snr_gamma, (int, float)) and math.isfinite(self.snr_gamma) and self.snr_gamma >= 0):
            problems.append(f"--snr-gamma must be a number >= 0, got {self.snr_gamma!r}")
        if not (isinstance(self.caption_dropout, (int, float)) and 0 <= self.caption_dropout < 1):
            problems.append(f"--caption-dropout must be in [0, 1), got {self.caption_dropout!r}")
        if self.threads is not None and not is_positive_int(self.threads):
            problems.append(f"--threads must be a positive integer, got {self.threads!r}")
        return problems

    def command(self, out: str) -> str:
        """The `restune train base-diffusion` command line that trains this config (flags that differ from the
        defaults, in field order)."""
        words = ["restune", "train", "base-diffusion", "--out", str(out)]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default and f.name != "threads":
                words += [f"--{f.name.replace('_', '-')}", str(value)]
        if self.threads is not None:
            words += ["--threads", str(self.threads)]
        return shlex.join(words)
