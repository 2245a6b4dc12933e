"""`restune describe`, and the tuner-structure flags that `train classify` shares."""
from __future__ import annotations

import argparse
import json


def add_tuner_structure_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--horizontal", default="adapter", help="horizontal tuner: adapter|prefix|prompt|none")
    parser.add_argument("--vertical", default="adapter", help="vertical tuner: adapter|prefix|prompt|none")
    parser.add_argument("--dim", type=int, default=10, help="adapter hidden size / prefix or prompt tokens (10)")
    parser.add_argument("--layers", default="all", help="tapped blocks: 'all', '1-6', '1,3,5-12' (1-based)")
    parser.add_argument("--pooling", default=None, choices=("token", "avg"), help="default: the backbone's own")


def register(groups) -> None:
    p = groups.top.add_parser("describe", help="count trainable and backbone parameters of a tuner")
    p.add_argument("--backbone", default="vit_base_patch16_224")
    p.add_argument("--method", default="bypass", help="bypass|restuning|linear|full")
    add_tuner_structure_args(p)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--mha", default="adapter", help="restuning: tuner beside MHA (adapter|prefix|prompt|none)")
    p.add_argument("--ffn", default="adapter", help="restuning: tuner beside FFN")
    p.add_argument("--block", default="none", help="restuning: tuner beside the whole block")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--diffusion", nargs="?", const="sd-v1.5", default=None, metavar="MODEL",
                   help="count the U-Net style bypass instead: sd-v1.5 (default, meta device), tiny-random, "
                        "tiny-trained or a diffusers directory")
    p.set_defaults(handler=_describe)


def _describe(args) -> int:
    if args.diffusion:
        from restuning.diffusion.describe import describe_diffusion  # diffusers: the diffusion extra

        result = describe_diffusion(args.diffusion)
        print(json.dumps(result, indent=None if args.json else 2))
        return 0
    from restuning.describe import describe  # torch + timm: the command line builds without them

    result = describe(
        args.backbone, method=args.method, horizontal=args.horizontal, vertical=args.vertical, dim=args.dim,
        layers=args.layers, num_classes=args.num_classes, pooling=args.pooling, mha=args.mha, ffn=args.ffn,
        block=args.block,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value}")
    return 0
