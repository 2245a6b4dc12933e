"""`restune train classify` and `restune demo`.

The command line is built without torch (installs with only the client extra have none), so each handler
imports the training modules it runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from restuning.cli_types import positive_int
from restuning.commands import add_tuner_structure_args
from restuning.errors import ConfigError
from restuning.options import add_options, given_options
from training.style_demo_config import DEMO_IMAGES, DEMO_STEPS
from training.train_config import NOT_FLAGS, TrainSettings
from tuner_store.urls import open_store

log = logging.getLogger(__name__)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, …")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loading worker processes (default: 0 on the CPU, 4 on CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(groups, *, diffusion_demo=None) -> None:
    """`diffusion_demo(args)` runs `restune demo --diffusion` (it calls the server's API, a layer above this one)."""
    p = groups.train.add_parser(
        "classify", help="train a classification tuner on an image folder, a CSV or a built-in task",
        description="Train a Res-Tuning-Bypass tuner (or a baseline) on a frozen backbone and write the artifact. "
                    "--data is an ImageFolder-style directory (one sub-folder per class), a CSV with path,label "
                    "columns (paths relative to the CSV), or a built-in task name (see `restune demo`).",
    )
    p.add_argument("--data", required=True, help="image folder, CSV (path,label) or built-in task (e.g. digits)")
    p.add_argument("--val-data", default=None, help="a separate validation set (same classes); default: carve "
                                                     "--val-fraction of --data, per class")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of each class held out (0.1; 0: none)")
    p.add_argument("--backbone", default="vit_tiny_patch16_224")
    p.add_argument("--weights", default="auto", help="pretrained | random | random:SEED | auto | FILE.safetensors")
    add_options(p, TrainSettings, exclude=NOT_FLAGS)
    p.add_argument("--no-augment", action="store_true", help="the same as --augment off")
    add_tuner_structure_args(p)
    p.add_argument("--mha", default="adapter", help="restuning: tuner beside MHA (adapter|prefix|prompt|none)")
    p.add_argument("--ffn", default="adapter", help="restuning: tuner beside FFN")
    p.add_argument("--block", default="none", help="restuning: tuner beside the whole block")
    p.add_argument("--name", default=None, help="tuner name (default: from the folder, CSV or task name)")
    p.add_argument("--out", default=None, help="artifact file (default: ./NAME.safetensors)")
    p.add_argument("--push", default=None, metavar="URL",
                   help="push the tuner: a store URL (file://…, redis://…, a path) or a server URL (http[s]://…; "
                        "uses $RESTUNE_ADMIN_TOKEN)")
    p.add_argument("--no-checkpoints", action="store_true", help="do not write epoch checkpoints")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_run_args(p)
    p.set_defaults(handler=_train_classify)

    d = groups.top.add_parser(
        "demo", help="train the 19 demo tuners (digits + generated structured tasks) and push them",
        description="Trains 19 bypass tuners (5 digits tasks on scikit-learn's real handwritten digits, 14 on "
                    "generated dSprites/Clevr/NORB-like scenes) from a feature cache, one backbone pass per image "
                    "set, pushes them to the store and prints a per-task accuracy table.",
    )
    d.add_argument("--store", default=None, help="store URL (default: $RESTUNE_STORE, else ./data/tuners)")
    d.add_argument("--backbone", default="vit_tiny_patch16_224")
    d.add_argument("--weights", default="auto", help="auto (pretrained if cached, else random:0) | random | …")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--epochs", type=positive_int, default=None, help="override the demo's 25 epochs")
    d.add_argument("--train-size", type=positive_int, default=None,
                   help="training images per image set (default: digits 1000, others 800)")
    d.add_argument("--test-size", type=positive_int, default=None,
                   help="test images per image set (default: digits 500, others 300)")
    d.add_argument("--json", action="store_true", help="print the table as JSON")
    _add_run_args(d)
    g = d.add_argument_group("--diffusion: style tuners on a text-to-image model instead")
    g.add_argument("--diffusion", action="store_true",
                   help="train 3 style tuners (crimson, stripes, blur) on generated style sets, push them, and write "
                        "one grid from one POST /v1/generate call")
    g.add_argument("--diffusion-model", default="tiny-trained",
                   help="'tiny-trained' (default), 'tiny-random' or a diffusers directory")
    g.add_argument("--server", default=None, help="generate the grid on this server (it must read --store); "
                                                  "default: the server app in this process")
    g.add_argument("--grid", default="style-demo-grid.png", help="the grid PNG (default ./style-demo-grid.png)")
    g.add_argument("--style-steps", type=positive_int, default=None,
                   help=f"training steps per style (default {DEMO_STEPS})")
    g.add_argument("--style-images", type=positive_int, default=None,
                   help=f"images per style set (default {DEMO_IMAGES})")
    d.set_defaults(handler=_demo, diffusion_demo=diffusion_demo)


def _workers(args, device: str) -> int:
    if args.workers is not None:
        return args.workers
    return 4 if device.startswith("cuda") else 0


def _train_classify(args) -> int:
    from training.classify import ClassifyOptions, summary_lines, train_classify  # torch: see the module docstring
    from training.data import sanitize_name
    from training.distributed import resolve_device
    from training.methods import MethodSpec

    device = resolve_device(args.device)
    given = given_options(args, TrainSettings, exclude=NOT_FLAGS)
    if args.no_augment:
        if given.get("augment", "off") != "off":
            raise ConfigError(f"--no-augment contradicts --augment {given['augment']}; give one of them")
        given["augment"] = "off"
    name_hint = args.name or sanitize_name(args.data.removeprefix("builtin:").rstrip("/").split("/")[-1]
                                           .removesuffix(".csv"))
    # Checkpoints sit next to the artifact (--out's directory), else under ./checkpoints.
    default_dir = (Path(args.out).parent if args.out else Path(".")) / "checkpoints" / name_hint
    if args.resume and args.no_checkpoints:
        raise ConfigError("--resume continues writing checkpoints; drop --no-checkpoints")
    given["checkpoint_dir"] = None if args.no_checkpoints else (args.checkpoint_dir or args.resume or str(default_dir))
    settings = TrainSettings(**given, device=device, workers=_workers(args, device),
                             progress=not args.no_progress and sys.stderr.isatty())
    spec = MethodSpec(method=settings.method, horizontal=args.horizontal, vertical=args.vertical, dim=args.dim,
                      layers=args.layers, pooling=args.pooling, mha=args.mha, ffn=args.ffn, block=args.block)
    opts = ClassifyOptions(data=args.data, backbone=args.backbone, weights=args.weights, spec=spec, train=settings,
                           name=args.name, out=args.out, push=args.push, val_data=args.val_data,
                           val_fraction=args.val_fraction)
    result = train_classify(opts)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports
        return 0
    if args.json:
        print(json.dumps({"name": result.name, "method": result.method, "out": str(result.out),
                          "pushed": result.pushed, "servable": result.servable, "metrics": result.metrics,
                          "unreadable": [{"path": u.path, "reason": u.reason} for u in result.unreadable]},
                         indent=2))
    else:
        for line in summary_lines(result):
            print(line)
    return 0


def _demo(args) -> int:
    if args.diffusion:
        if args.diffusion_demo is None:
            raise ConfigError("restune demo --diffusion is not available in this command line")
        return args.diffusion_demo(args)
    from training.demo import DemoSizes, format_table, run_demo_report  # torch: see the module docstring
    from training.distributed import resolve_device

    device = resolve_device(args.device)
    defaults = DemoSizes()
    train = {s: args.train_size for s in defaults.train} if args.train_size else defaults.train
    test = {s: args.test_size for s in defaults.test} if args.test_size else defaults.test
    sizes = DemoSizes(train=train, test=test, epochs=args.epochs or defaults.epochs)
    store = args.store or os.environ.get("RESTUNE_STORE") or None
    report = run_demo_report(store, backbone=args.backbone, weights=args.weights, seed=args.seed,
                             progress=not args.no_progress and sys.stderr.isatty(), sizes=sizes, device=device,
                             workers=_workers(args, device))
    if args.json:
        print(json.dumps({"seconds": round(report.seconds, 1), "backbone": report.backbone,
                          "weights": report.weights, "store": report.store,
                          "tasks": [r.__dict__ for r in report.rows]}, indent=2))
    else:
        print(format_table(report))
    return 0


def seed_demo_store(settings) -> None:
    """`restune serve --demo-if-empty`: train and push the 19 demo tuners when the store holds none."""
    if not settings.demo_if_empty:
        return
    from restuning.torch_threads import DEFAULT_TORCH_THREADS, call_on_passing_thread  # torch (model extra)
    from training.demo import run_demo  # torch (model extra)

    with open_store(settings.store) as store:
        if store.latest():
            return
    log.info("the store %s is empty: training the 19 demo tuners first (restune demo)", settings.store)
    # on a thread that ends: its OpenMP team must not outlive it next to the server's (see torch_threads)
    call_on_passing_thread(lambda: run_demo(settings.store, backbone=settings.backbone, weights=settings.weights),
                           threads=settings.torch_threads or DEFAULT_TORCH_THREADS, name="restune-demo")


def serve_hints(settings) -> list[str]:
    """A request to try once the server is up, with the demo's sample image (a committed PNG)."""
    from training.demo_tasks import SAMPLE_IMAGE_PATH  # numpy (model extra)

    path = SAMPLE_IMAGE_PATH
    if str(path).startswith(os.getcwd()):
        path = os.path.relpath(path)
    return [f"try:  curl -s -X POST http://{settings.host}:{settings.port}/v1/classify -F file=@{path} -F top_k=3"]
