"""`restune train style`: train a Res-Tuning-Bypass style tuner on a folder of images."""
from __future__ import annotations

import json

from restuning.options import add_options, given_options
from training.push import push_artifact
from training.style_config import StyleTrainConfig
from tuner_store.artifact import write_artifact


def register(groups) -> None:
    p = groups.train.add_parser(
        "style", help="train a diffusion style tuner (U-Net bypass) on a folder of images",
        description="Train a Res-Tuning-Bypass style tuner on a frozen Stable Diffusion U-Net. Only the bypass "
                    "is trained (noise-prediction loss, AdamW, constant lr; paper Table 11).",
    )
    add_options(p, StyleTrainConfig)
    p.add_argument("--out", default=None, help="write the artifact to this .safetensors file")
    p.add_argument("--push", default=None,
                   help="store URL (file://…, redis://…) or server URL (http[s]://…, uses $RESTUNE_ADMIN_TOKEN)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(handler=_train_style)


def _train_style(args) -> int:
    from training.style import train_style  # torch + diffusers: the diffusion extra

    config = StyleTrainConfig(**given_options(args, StyleTrainConfig))
    result = train_style(config, progress=not args.no_progress)
    out = {"style": args.style, "metrics": result.metrics, "images": result.images.report()}
    if args.out:
        out["written"] = str(write_artifact(result.artifact, args.out))
    if args.push:
        out["pushed"] = push_artifact(result.artifact, args.push)
    if not args.out and not args.push:
        out["note"] = "nothing saved: give --out FILE and/or --push URL"
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        m = result.metrics
        print(f"style {args.style!r}: {out['images']}")
        print(f"trained {m['steps']} steps ({m['epochs']} epochs, batch {m['batch_size']}, {m['resolution']}²) in "
              f"{m['train_seconds']:.1f} s; loss {m['loss_first']:.4f} -> {m['loss_mean_last_10pct']:.4f} "
              f"(mean of the last 10%); {m['trainable_params']:,} trainable parameters")
        print(f"fixed-noise eval loss: base U-Net {m['eval_loss_base']:.4f} -> with the tuner {m['eval_loss_trained']:.4f}")
        for key in ("written", "pushed", "note"):
            if key in out:
                print(f"{key}: {out[key]}")
    return 0
