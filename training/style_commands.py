"""`restune train style`: train a Res-Tuning-Bypass style tuner on a folder of images."""
from __future__ import annotations

import json

from training.push import push_artifact
from tuner_store.artifact import write_artifact


def register(groups) -> None:
    p = groups.train.add_parser(
        "style", help="train a diffusion style tuner (U-Net bypass) on a folder of images",
        description="Train a Res-Tuning-Bypass style tuner on a frozen Stable Diffusion U-Net. Only the bypass "
                    "is trained (noise-prediction loss, AdamW, constant lr; paper Table 11).",
    )
    p.add_argument("--images", required=True, help="folder of the style's images (read recursively)")
    p.add_argument("--style", required=True, help="style name = artifact name (a-z 0-9 . _ -)")
    p.add_argument("--prompt-template", default="a photo in {style} style",
                   help="caption of every image; {style} is replaced by the style name")
    p.add_argument("--diffusion-model", default="tiny-random", help="'tiny-random' or a local diffusers directory")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--epochs", type=int, default=10, help="epochs over the images (Table 11: 10)")
    p.add_argument("--batch-size", type=int, default=8, help="Table 11: 8")
    p.add_argument("--resolution", type=int, default=None, help="square training size (default: the model's, 512 for SD)")
    p.add_argument("--lr", type=float, default=1e-4, help="constant AdamW learning rate (Table 11: 1e-4)")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    p.add_argument("--dtype", default="float32", help="float32, or bfloat16 (CUDA, autocast)")
    p.add_argument("--groups", type=int, default=4, help="adapter channel groups (reference default 4)")
    p.add_argument("--scale-factor", type=int, default=2, help="adapter hidden = scale_factor x C/groups")
    p.add_argument("--conv-groups", type=int, default=32, help="groups of the zero-init 3x3 convs")
    p.add_argument("--out", default=None, help="write the artifact to this .safetensors file")
    p.add_argument("--push", default=None,
                   help="store URL (file://…, redis://…) or server URL (http[s]://…, uses $RESTUNE_ADMIN_TOKEN)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(handler=_train_style)


def _train_style(args) -> int:
    from training.style import StyleTrainConfig, train_style  # torch + diffusers: the diffusion extra

    config = StyleTrainConfig(
        images=args.images, style=args.style, prompt_template=args.prompt_template,
        diffusion_model=args.diffusion_model, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
        resolution=args.resolution, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=args.device,
        dtype=args.dtype, groups=args.groups, scale_factor=args.scale_factor, conv_groups=args.conv_groups,
    )
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
