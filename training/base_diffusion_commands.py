"""`restune train base-diffusion`: train the small text-to-image model from scratch (see training.base_diffusion)."""
from __future__ import annotations

import json

from restuning.errors import ConfigError
from restuning.options import add_options, given_options
from training.base_diffusion_config import BaseDiffusionConfig


def register(groups) -> None:
    p = groups.train.add_parser(
        "base-diffusion", help="train a small text-to-image model from scratch on procedural scenes",
        description="Train a toy Stable-Diffusion-shaped model (CLIP text encoder, UNet2DConditionModel, pixel "
                    "space) from scratch on captioned scenes drawn in code ('a red circle on the left over a blue "
                    "background'), and write it as a model directory that --diffusion-model takes. The defaults "
                    "are the recipe of the shipped 'tiny-trained' model.",
    )
    p.add_argument("--out", required=True, help="the model directory to write (new or empty)")
    add_options(p, BaseDiffusionConfig)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print what training.json records")
    p.set_defaults(handler=_train_base_diffusion)


def _train_base_diffusion(args) -> int:
    from training.base_diffusion import train_base_diffusion  # torch + diffusers: the diffusion extra

    config = BaseDiffusionConfig(**given_options(args, BaseDiffusionConfig))
    problems = config.problems()
    if problems:
        raise ConfigError(problems)
    record = train_base_diffusion(config, args.out, progress=not args.no_progress)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"trained {config.steps} steps x {config.batch_size} scenes in {record['train_seconds']:.1f} s "
          f"({record['machine']['torch_threads']} threads); loss {record['loss_first']:.4f} -> "
          f"{record['loss_mean_last_10pct']:.4f} (mean of the last 10%)")
    print(f"U-Net {record['parameters']['unet']:,} + text encoder {record['parameters']['text_encoder']:,} parameters, "
          f"float16; U-Net fingerprint {record['unet_fingerprint'][:12]}…")
    print(f"wrote {args.out}: use it with --diffusion-model {args.out}")
    return 0
