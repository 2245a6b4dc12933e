"""`restune describe` and `restune bench multitask`."""
from __future__ import annotations

import argparse
import json


def positive_list(cast: type[int] | type[float]):
    """argparse type: a comma-separated list of positive ints or floats ("1,32", "0.05,0.01")."""
    noun = "integers" if cast is int else "numbers"

    def parse(text: str) -> list:
        try:
            values = [cast(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}, got {text!r}") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected positive {noun}, got {text!r}")
        return values

    return parse


def _dtype(name: str):
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise argparse.ArgumentTypeError(f"unknown dtype {name!r}; choose float32, float16 or bfloat16")
    return table[name]


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


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
                   help="count the U-Net style bypass instead: sd-v1.5 (default, meta device), tiny-random or a "
                        "diffusers directory")
    p.set_defaults(handler=_describe)

    b = groups.bench.add_parser("multitask", help="engine vs one backbone forward vs naive heads vs T models")
    b.add_argument("--backbone", default="vit_base_patch16_224")
    b.add_argument("--weights", default="random")
    b.add_argument("--batch", type=positive_list(int), default=[1], help="comma list, e.g. 1,32")
    b.add_argument("--tasks", type=positive_list(int), default=[1, 2, 4, 8, 19], help="comma list of head counts")
    b.add_argument("--pooling", default="token,avg", help="token, avg or token,avg")
    b.add_argument("--methods", default="backbone,engine,naive,full_models",
                   help="comma list of backbone, engine, engine_torch (engine on the PyTorch kernels), "
                        "engine_stage (Triton, one launch per stage; CUDA), naive, full_models")
    b.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"),
                   help="kernel backend of the 'engine' method: auto = fused Triton kernels on CUDA, PyTorch on CPU")
    b.add_argument("--repeats", type=int, default=7)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", type=_dtype, default="float32")
    b.add_argument("--out-dir", default="bench/results")
    b.add_argument("--no-save", action="store_true", help="do not write bench/results files")
    b.add_argument("--json", action="store_true", help="print the JSON result")
    b.set_defaults(handler=_bench_multitask)


def _describe(args) -> int:
    if args.diffusion:
        from restuning.diffusion.describe import describe_diffusion

        result = describe_diffusion(args.diffusion)
        print(json.dumps(result, indent=None if args.json else 2))
        return 0
    from restuning.describe import describe

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


def _bench_multitask(args) -> int:
    from restuning.bench_multitask import METHODS, run_multitask_bench, save_multitask
    from restuning.errors import ConfigError

    poolings = [p for p in args.pooling.split(",") if p]
    methods = [m for m in args.methods.split(",") if m]
    bad = [p for p in poolings if p not in ("token", "avg")] + [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown pooling/method {bad}; poolings: token, avg; methods: {', '.join(METHODS)}")
    device = _resolve_device(args.device)
    payload = run_multitask_bench(
        backbone_name=args.backbone, batches=args.batch, task_counts=args.tasks, poolings=poolings,
        methods=methods, repeats=args.repeats, warmup=args.warmup, device=device, dtype=args.dtype,
        kernel_backend=args.backend,
        weights=args.weights,
    )
    if not args.no_save:
        for path in save_multitask(payload, args.out_dir, device):
            print(f"wrote {path}")
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(f"{payload['device']}, torch {payload['torch']}")
        print(f"{'batch':>5} {'pooling':>7} {'tasks':>5} {'method':>12} {'median ms':>10}")
        for r in payload["results"]:
            print(f"{r['batch']:>5} {r['pooling']:>7} {r['tasks']:>5} {r['method']:>12} {r['median_ms']:>10.2f}")
        for r in payload["ratios"]:
            print(r)
    return 0
