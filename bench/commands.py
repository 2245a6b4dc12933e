"""`restune bench …`: every benchmark behind one interface.

Each benchmark here is its arguments plus a run function that returns a `BenchResult`; `bench.results.emit`
writes it under --out-dir (unless --no-save) and prints its report (or the JSON with --json). The benchmark
modules import torch and the model stack, so each run function imports its module when it runs: building the
command line (`restune --help`, and installs without torch) never pays for them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from bench import accuracy_config as acc
from bench.results import BenchResult, emit
from bench.soak_config import SoakConfig
from bench.tuners_config import TunersConfig
from bench.style_ceilings import HEAD_CEILING_STEPS
from restuning.cli_types import comma_list, non_negative_int, positive_int, positive_list
from restuning.errors import ConfigError
from training.style_demo_config import DEMO_IMAGES, DEMO_STEPS


@dataclass(frozen=True)
class Benchmark:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], object]  # -> bench.results.BenchResult


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="bench/results", help="where result files go (default bench/results)")
    p.add_argument("--no-save", action="store_true", help="do not write result files")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the report")


# -- multitask --------------------------------------------------------------------------------------------

def _multitask_args(b: argparse.ArgumentParser) -> None:
    b.add_argument("--backbone", default="vit_base_patch16_224")
    b.add_argument("--weights", default="random")
    b.add_argument("--batch", type=positive_list(int), default=[1], help="comma list, e.g. 1,32")
    b.add_argument("--tasks", type=positive_list(int), default=[1, 2, 4, 8, 19], help="comma list of head counts")
    b.add_argument("--pooling", type=comma_list, default=["token", "avg"], help="token, avg or token,avg")
    b.add_argument("--methods", type=comma_list, default=["backbone", "engine", "naive", "full_models"],
                   help="comma list of backbone, engine, engine_torch (engine on the PyTorch kernels), "
                        "engine_stage (Triton, one launch per stage; CUDA), naive, full_models")
    b.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"),
                   help="kernel backend of the 'engine' method: auto = fused Triton kernels on CUDA, PyTorch on CPU")
    b.add_argument("--repeats", type=int, default=7)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", default="float32", choices=("float32", "fp32", "float16", "fp16", "bfloat16", "bf16"))


def _multitask(args):
    from bench.multitask import (  # torch: see the module docstring (and below)
        METHODS,
        multitask_result,
        run_multitask_bench,
    )
    from restuning.devices import resolve_device, resolve_dtype

    bad = [p for p in args.pooling if p not in ("token", "avg")] + [m for m in args.methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown pooling/method {bad}; poolings: token, avg; methods: {', '.join(METHODS)}")
    device = str(resolve_device(args.device))
    payload = run_multitask_bench(
        backbone_name=args.backbone, batches=args.batch, task_counts=args.tasks, poolings=args.pooling,
        methods=args.methods, repeats=args.repeats, warmup=args.warmup, device=device,
        dtype=resolve_dtype(args.dtype, device), kernel_backend=args.backend, weights=args.weights,
    )
    return multitask_result(payload, device)


# -- accuracy ----------------------------------------------------------------------------------------------

def _accuracy_args(a: argparse.ArgumentParser) -> None:
    a.add_argument("--backbone", default="vit_tiny_patch16_224")
    a.add_argument("--weights", default="random:0")
    a.add_argument("--pooling", default=None, choices=("token", "avg"),
                   help="default: the backbone's own (a given one names the file: digits-accuracy-avg-DEVICE.json)")
    a.add_argument("--epochs", type=positive_int, default=None, help="default: train classify's")
    a.add_argument("--batch-size", type=positive_int, default=None, help="default: train classify's")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--recipes", type=comma_list, default=list(acc.RECIPES),
                   help="train classify runs compared: " + "; ".join(f"{r}: {acc.recipe_flags(r)}" for r in acc.RECIPES)
                        + " ('none' skips them)")
    a.add_argument("--repeats", type=positive_int, default=1, help="rounds of the recipes, taking turns (1)")
    a.add_argument("--feature-cache", action="store_true",
                   help="the recipes train with --feature-cache (the file is then digits-accuracy-cache-DEVICE.json)")
    a.add_argument("--methods", type=comma_list, default=list(acc.METHODS),
                   help="methods of the lr x weight-decay sweep ('none' skips it)")
    for method in acc.METHODS:
        a.add_argument(f"--lr-{method}", type=positive_list(float), default=None,
                       help=f"sweep candidates ({acc.candidates_text(acc.SWEEP_LRS[method])})")
        a.add_argument(f"--wd-{method}", type=_weight_decays, default=None,
                       help=f"sweep candidates ({acc.candidates_text(acc.SWEEP_WDS[method])})")
    a.add_argument("--cache-dir", default=None, help="the sweep's feature cache directory (default: a temporary one)")
    a.add_argument("--device", default="auto")
    a.add_argument("--no-progress", action="store_true")


def _weight_decays(text: str) -> list[float]:
    values = [float(v) for v in comma_list(text)] if text.strip() else []
    if not values or any(not 0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated weight decays in [0, 1), got {text!r}")
    return values


def _accuracy(args):
    from bench.accuracy import format_accuracy, run_digits_accuracy  # torch: see the module docstring
    from bench.common import device_slug
    from training.distributed import resolve_device

    recipes = [] if args.recipes == ["none"] else args.recipes
    methods = [] if args.methods == ["none"] else args.methods
    _known(recipes, acc.RECIPES, "recipes", allow_empty=True)
    _known(methods, acc.METHODS, allow_empty=True)
    if not recipes and not methods:
        raise ConfigError("--recipes none and --methods none leave nothing to measure")
    lrs = {m: getattr(args, f"lr_{m}") for m in acc.METHODS if getattr(args, f"lr_{m}")}
    wds = {m: getattr(args, f"wd_{m}") for m in acc.METHODS if getattr(args, f"wd_{m}")}
    device = resolve_device(args.device)
    payload = run_digits_accuracy(backbone=args.backbone, weights=args.weights, pooling=args.pooling,
                                  epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, recipes=recipes,
                                  repeats=args.repeats, feature_cache=args.feature_cache, methods=methods, lrs=lrs,
                                  wds=wds, device=device, cache_dir=args.cache_dir, progress=_progress(args))
    # settings that change the numbers name the file: a pooling rule, the recipes' cache (their times differ)
    parts = ["digits-accuracy", args.pooling, "cache" if args.feature_cache and recipes else None, device_slug(device)]
    return BenchResult("-".join(p for p in parts if p), payload, format_accuracy(payload))


# -- train-memory -------------------------------------------------------------------------------------------

def _train_memory_args(b: argparse.ArgumentParser) -> None:
    b.add_argument("--backbone", default="vit_base_patch16_224")
    b.add_argument("--batch-size", type=positive_int, default=32)
    b.add_argument("--methods", type=comma_list, default=["full", "restuning", "bypass", "bypass_cached"],
                   help="comma list of full, restuning, bypass, bypass_cached, linear")
    b.add_argument("--pooling", default=None, choices=("token", "avg"), help="default: the backbone's own")
    b.add_argument("--steps", type=positive_int, default=None, help="measured steps (CPU 3, CUDA 10)")
    b.add_argument("--warmup", type=int, default=None, help="warm-up steps (CPU 1, CUDA 3)")
    b.add_argument("--threads", type=int, default=None, help="torch threads in each worker")
    b.add_argument("--device", default="auto")
    b.add_argument("--diffusion", action="store_true",
                   help="measure Stable Diffusion style tuning instead (bypass vs full U-Net fine-tuning)")
    b.add_argument("--diffusion-model", default=None, help="--diffusion: a diffusers directory, tiny-trained or tiny-random")
    b.add_argument("--diffusion-batch-size", type=int, default=None)
    b.add_argument("--diffusion-resolution", type=int, default=None)
    b.add_argument("--diffusion-steps", type=int, default=None)
    b.add_argument("--no-progress", action="store_true")


def _train_memory(args):
    if args.diffusion:
        from bench.diffusion_memory import diffusion_train_memory  # torch, diffusers

        return diffusion_train_memory(model=args.diffusion_model, device=args.device,
                                      batch_size=args.diffusion_batch_size, resolution=args.diffusion_resolution,
                                      steps=args.diffusion_steps, threads=args.threads)
    from bench.common import device_slug  # torch: see the module docstring
    from bench.train_memory import METHODS, format_report, run_train_memory
    from training.distributed import resolve_device

    _known(args.methods, METHODS)
    device = resolve_device(args.device)
    payload = run_train_memory(backbone=args.backbone, batch_size=args.batch_size, device=device,
                               methods=args.methods, steps=args.steps, warmup=args.warmup, pooling=args.pooling,
                               threads=args.threads, progress=_progress(args))
    return BenchResult(f"train-memory-{args.backbone}-{device_slug(device)}", payload, format_report(payload))


# -- serve ----------------------------------------------------------------------------------------------------

def _serve_args(b: argparse.ArgumentParser) -> None:
    b.add_argument("--backbone", default="vit_tiny_patch16_224")
    b.add_argument("--tasks", type=int, default=19, help="random tuners loaded (default 19)")
    b.add_argument("--concurrency", type=int, default=16)
    b.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    b.add_argument("--max-batch-size", type=int, default=None, help="server batch cap (default concurrency / 2)")
    b.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    b.add_argument("--rounds", type=int, default=3,
                   help="server and raw engine take turns this many times (default 3)")
    b.add_argument("--hotload-puts", type=int, default=20, help="put-to-serving samples (0 skips)")


def _serve(args):
    from bench.serve import run_serve_bench, serve_result  # torch: see the module docstring

    payload = run_serve_bench(
        backbone_name=args.backbone, tasks=args.tasks, concurrency=args.concurrency, duration=args.duration,
        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
        hotload_puts=args.hotload_puts, rounds=args.rounds,
    )
    return serve_result(payload, args.backbone, args.concurrency)


# -- v2 ---------------------------------------------------------------------------------------------------------

def _v2_args(b: argparse.ArgumentParser) -> None:
    b.add_argument("--backbone", default="vit_tiny_patch16_224")
    b.add_argument("--tasks", type=int, default=19, help="random tuners loaded (default 19)")
    b.add_argument("--concurrency", type=int, default=16)
    b.add_argument("--duration", type=float, default=30.0, help="seconds of load per protocol")
    b.add_argument("--rounds", type=int, default=3, help="the protocols take turns this many times (default 3)")
    b.add_argument("--max-batch-size", type=int, default=None, help="server batch cap (default concurrency / 2)")


def _v2(args):
    from bench.protocols import protocols_result, run_protocols_bench  # torch, tritonclient: see the docstring

    payload = run_protocols_bench(backbone_name=args.backbone, tasks=args.tasks, concurrency=args.concurrency,
                                  duration=args.duration, rounds=args.rounds, max_batch_size=args.max_batch_size)
    return protocols_result(payload, args.backbone, args.concurrency)


# -- soak -----------------------------------------------------------------------------------------------------

def _soak_args(b: argparse.ArgumentParser) -> None:
    d = SoakConfig()
    b.add_argument("--backbone", default=d.backbone)
    b.add_argument("--weights", default=d.weights, help="backbone weights for the server and the tuners (default %(default)s)")
    b.add_argument("--duration", type=float, default=d.duration, help="measured seconds of load (default %(default)s)")
    b.add_argument("--warmup", type=float, default=d.warmup, help="seconds of load before measuring (default %(default)s)")
    b.add_argument("--rate", type=float, default=d.rate, help="operations per second, fixed (default %(default)s)")
    b.add_argument("--write-fraction", type=float, default=d.write_fraction,
                   help="share of operations that are uploads or deletes (default %(default)s)")
    b.add_argument("--tasks", type=int, default=d.tasks, help="stable tuners (default %(default)s)")
    b.add_argument("--churn", type=int, default=d.churn, help="tuners uploaded and deleted in turn (default %(default)s)")
    b.add_argument("--images", type=int, default=d.images, help="distinct images in the pool (default %(default)s)")
    b.add_argument("--image-size", type=int, default=d.image_size)
    b.add_argument("--max-in-flight", type=int, default=d.max_in_flight)
    b.add_argument("--sample-interval", type=float, default=d.sample_interval, help="RSS sampling period in seconds")
    b.add_argument("--fresh-names", action="store_true",
                   help="each churn upload after a delete takes a name never used before (name-keyed state churns too)")
    b.add_argument("--rss-growth-mb", type=float, default=d.rss_growth_mb,
                   help="RSS growth allowed over the measured run: the fitted slope times its length "
                        "(default %(default)s MiB)")
    b.add_argument("--rss-cap-mb", type=float, default=d.rss_cap_mb,
                   help="the measured run's peak RSS may exceed its start by at most this (default %(default)s MiB)")
    b.add_argument("--latency-ratio", type=float, default=d.latency_ratio,
                   help="classify p99 of the last window over the first, at most (default %(default)s)")
    b.add_argument("--latency-window", type=float, default=d.latency_window,
                   help="seconds per latency window, first and last of the measured run (default %(default)s; a "
                        "third of the run when that is shorter; windows under 60 s are not judged)")
    b.add_argument("--store", default=None,
                   help="a scratch store URL (file:// or redis://) the server uses; default: a fresh local store")
    b.add_argument("--server-arg", dest="server_args", action="append", default=[],
                   help="extra `restune serve` flag, repeatable (e.g. --server-arg=--feature-cache-mb=0)")
    b.add_argument("--server-wrapper", default=None,
                   help="run the server as WRAPPER -m restune serve …, e.g. \"python -m bench.memprobe --out F\" or "
                        "\"python -m memray run -o F\" (profilers; latency is then not representative)")
    b.add_argument("--seed", type=int, default=d.seed)


def _soak(args):
    from bench.soak import run_soak, soak_result  # torch: see the module docstring
    if args.duration <= 0 or args.warmup < 0 or args.rate <= 0 or not 0 <= args.write_fraction <= 1:
        raise ConfigError("soak needs --duration > 0, --warmup >= 0, --rate > 0 and 0 <= --write-fraction <= 1")
    if args.tasks < 1 or args.churn < 1 or args.images < 1:
        raise ConfigError("soak needs at least one stable tuner, one churn tuner and one image")
    cfg = SoakConfig(
        backbone=args.backbone, weights=args.weights, duration=args.duration, warmup=args.warmup, rate=args.rate,
        write_fraction=args.write_fraction, tasks=args.tasks, churn=args.churn, fresh_names=args.fresh_names,
        images=args.images, image_size=args.image_size, max_in_flight=args.max_in_flight,
        sample_interval=args.sample_interval, rss_growth_mb=args.rss_growth_mb, rss_cap_mb=args.rss_cap_mb,
        latency_ratio=args.latency_ratio, latency_window=args.latency_window, store=args.store,
        server_args=list(args.server_args), server_wrapper=args.server_wrapper, seed=args.seed,
    )
    return soak_result(run_soak(cfg), cfg)


# -- tuners ---------------------------------------------------------------------------------------------------

def _tuners_args(b: argparse.ArgumentParser) -> None:
    d = TunersConfig()
    b.add_argument("--backbone", default=d.backbone)
    b.add_argument("--counts", type=positive_list(int), default=list(d.counts),
                   help="tuners in the store, compared with a 5-tuner server (default %(default)s)")
    b.add_argument("--pooling", type=comma_list, default=list(d.poolings), help="token, avg or token,avg")
    b.add_argument("--mixes", type=comma_list, default=[f"{k}:{p}" for k, p in d.mixes],
                   help="request mixes K:POPULARITY, popularity uniform or zipf (default %(default)s)")
    b.add_argument("--partial-budget", type=float, default=d.partial_budget,
                   help="share of the tuners the small resident budget holds, largest N only (0: skip)")
    b.add_argument("--concurrency", type=int, default=d.concurrency)
    b.add_argument("--window-s", type=float, default=d.window_s, help="seconds per load window")
    b.add_argument("--rounds", type=int, default=d.rounds, help="windows each server gets, taking turns")
    b.add_argument("--puts", type=int, default=d.puts, help="put-to-serving samples per N (0 skips)")
    b.add_argument("--cold-probes", type=int, default=d.cold_probes,
                   help="cold misses timed per N, each beside a hit sent at the same moment, under load (0 skips)")
    b.add_argument("--image-size", type=int, default=d.image_size)
    b.add_argument("--store", default=d.store, help="file (a temporary directory) or a scratch redis:// URL "
                                                    "(its database is flushed)")
    b.add_argument("--engine-tuners", type=int, default=d.engine_tuners)
    b.add_argument("--device", default=d.device, help="the servers' device: cpu (default), cuda, cuda:N")
    b.add_argument("--seed", type=int, default=d.seed)


def _tuners(args):
    from bench.tuners import run_tuners_bench, tuners_result  # torch: see the module docstring

    mixes = []
    for mix in args.mixes:
        k, _, popularity = mix.partition(":")
        if not k.isdigit() or int(k) < 1 or popularity not in ("uniform", "zipf"):
            raise ConfigError(f"--mixes {mix!r}: give K:POPULARITY, e.g. 3:zipf or 1:uniform")
        mixes.append((int(k), popularity))
    if any(c < 6 for c in args.counts if c != 5) or not args.counts:
        raise ConfigError("--counts are tuner counts above 5 (5 is the baseline every count is compared with)")
    cfg = TunersConfig(backbone=args.backbone, counts=tuple(args.counts), poolings=tuple(args.pooling),
                       mixes=tuple(mixes), partial_budget=args.partial_budget, concurrency=args.concurrency,
                       window_s=args.window_s, rounds=args.rounds, puts=args.puts, cold_probes=args.cold_probes, image_size=args.image_size,
                       store=args.store, engine_tuners=args.engine_tuners, seed=args.seed, device=args.device)
    return tuners_result(run_tuners_bench(cfg, progress=lambda line: print(line, file=sys.stderr, flush=True)))


# -- generate -------------------------------------------------------------------------------------------------

def _generate_args(b: argparse.ArgumentParser) -> None:
    b.add_argument("--diffusion-model", default="tiny-random",
                   help="'tiny-random', 'tiny-trained' or a diffusers directory")
    b.add_argument("--styles", type=int, default=10, help="number of styles S (default 10)")
    b.add_argument("--prompts", type=int, default=2, help="number of prompts P (default 2)")
    b.add_argument("--steps", type=int, default=None, help="default: 10 for tiny-random and tiny-trained, 50 for a "
                                                            "real model")
    b.add_argument("--guidance-scale", type=float, default=None,
                   help="default: the model's (3.0; tiny-trained's generation_defaults.json: 1.5)")
    b.add_argument("--height", type=int, default=None)
    b.add_argument("--width", type=int, default=None)
    b.add_argument("--tuners", choices=("trained", "random"), default=None,
                   help="style tuners: quick-trained here (default for the tiny models) or random non-zero")
    b.add_argument("--train-steps", type=int, default=60, help="steps per quick-trained style (lr 1e-3)")
    b.add_argument("--store", default=None, help="use this store's diffusion tuners instead")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", default=None)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    b.add_argument("--no-progress", action="store_true")


def _generate(args):
    from bench.generate import generate_result, run_generate_bench  # torch, diffusers

    payload, grid = run_generate_bench(
        model=args.diffusion_model, styles=args.styles, prompts=args.prompts, steps=args.steps,
        guidance_scale=args.guidance_scale, height=args.height, width=args.width, device=args.device,
        dtype=args.dtype, tuners=args.tuners, train_steps=args.train_steps, store=args.store,
        repeats=args.repeats, warmup=args.warmup, seed=args.seed, progress=not args.no_progress,
        threads=args.threads,
    )
    return generate_result(payload, grid, args.device)


# -- styles ---------------------------------------------------------------------------------------------------

def _styles_args(b: argparse.ArgumentParser) -> None:
    b.add_argument("--diffusion-model", default="tiny-trained",
                   help="a model trained by `restune train base-diffusion` (default tiny-trained)")
    b.add_argument("--prompts", type=positive_int, default=96, help="evaluation prompts (scene captions; default 96)")
    b.add_argument("--steps", type=positive_int, default=25, help="sampler steps per image (default 25; the model's default sampler)")
    b.add_argument("--guidance-scale", type=float, default=None,
                   help="default: the model's (tiny-trained: 1.5, from its generation_defaults.json)")
    b.add_argument("--style-steps", type=positive_int, default=DEMO_STEPS,
                   help=f"training steps per style (default {DEMO_STEPS})")
    b.add_argument("--style-images", type=positive_int, default=DEMO_IMAGES,
                   help=f"images per style set (default {DEMO_IMAGES})")
    b.add_argument("--classifier-scenes", type=positive_int, default=6000,
                   help="drawn scenes the shape classifier trains on (default 6000)")
    b.add_argument("--classifier-epochs", type=positive_int, default=40)
    b.add_argument("--head-ceiling-steps", type=non_negative_int, default=HEAD_CEILING_STEPS,
                   help=f"optimisation steps of the head ceiling: the closest images to each style's "
                        f"transform that the frozen U-Net head can output (default "
                        f"{HEAD_CEILING_STEPS}; 0: not taken)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="cpu")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    b.add_argument("--no-progress", action="store_true")


def _styles(args):
    from bench.styles import run_styles_bench, styles_result  # torch, diffusers

    payload, grid = run_styles_bench(
        model=args.diffusion_model, prompts=args.prompts, steps=args.steps, guidance_scale=args.guidance_scale,
        style_steps=args.style_steps, style_images=args.style_images, classifier_scenes=args.classifier_scenes,
        classifier_epochs=args.classifier_epochs, head_ceiling_steps=args.head_ceiling_steps, seed=args.seed,
        device=args.device, threads=args.threads,
        progress=_progress(args),
    )
    return styles_result(payload, grid, args.device)


def diffusion_demo(args) -> int:
    """`restune demo --diffusion` (training.commands registers the flags; this runs above the server layer)."""
    from bench.style_demo import run_style_demo  # torch, diffusers, the server app

    store = args.store or os.environ.get("RESTUNE_STORE") or None  # as `restune demo` picks its store
    sizes = {k: v for k, v in (("steps", args.style_steps), ("images", args.style_images)) if v is not None}
    summary = run_style_demo(model=args.diffusion_model, store=store, server=args.server, grid_path=args.grid,
                             seed=args.seed, device=args.device, progress=not args.no_progress and sys.stderr.isatty(),
                             **sizes)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for name, s in summary["styles"].items():
        print(f"style {name!r}: {s['steps']} steps in {s['train_seconds']:.1f} s, fixed-noise loss "
              f"{s['eval_loss_base']:.4f} -> {s['eval_loss_trained']:.4f}; pushed {s['pushed']}")
    changes = ", ".join(f"{k} {v}" for k, v in summary["pixels_mean_abs_diff_to_base"].items())
    print(f"grid ({len(summary['prompts'])} prompts x {', '.join(summary['columns'])}) from one POST /v1/generate "
          f"({summary['server']}): {summary['grid']}; mean |style - base| per pixel (0-255): {changes}")
    print(f"serve them: restune serve --diffusion-model {args.diffusion_model} --store {summary['store']}")
    return 0


# -- wiring ---------------------------------------------------------------------------------------------------

def _known(values: list[str], known, what: str = "methods", *, allow_empty: bool = False) -> None:
    bad = [v for v in values if v not in known]
    if bad or not (values or allow_empty):
        raise ConfigError(f"unknown {what} {bad}; choose from {', '.join(known)}")


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("multitask", "engine vs one backbone forward vs naive heads vs T models", _multitask_args, _multitask),
    Benchmark("accuracy", "digits: train classify's defaults vs --no-augment vs the previous recipe (accuracy, "
              "time); an lr x weight-decay sweep of linear probing, bypass, full fine-tuning", _accuracy_args,
              _accuracy),
    Benchmark("train-memory", "peak memory + step time: full FT, Res-Tuning, bypass, cached", _train_memory_args,
              _train_memory),
    Benchmark("serve", "a real server on loopback under concurrent clients vs the raw engine", _serve_args, _serve),
    Benchmark("v2", "one server: /v2 through tritonclient vs /v1 multipart, same images and concurrency", _v2_args,
              _v2),
    Benchmark("soak", "a real server under a steady mixed classify/upload/delete load: errors and memory over time",
              _soak_args, _soak),
    Benchmark("generate", "S styles x P prompts in one pass vs S sequential runs", _generate_args, _generate),
    Benchmark("tuners", "a real server holding N tuners (up to thousands) vs one holding 5: throughput, cold misses, "
              "hot-load, memory, start-up", _tuners_args, _tuners),
    Benchmark("styles", "tiny-trained: prompted shapes in base images, style strength, content kept",
              _styles_args, _styles),
)


def register(groups) -> None:
    for bench in BENCHMARKS:
        p = groups.bench.add_parser(bench.name, help=bench.help)
        bench.arguments(p)
        _common(p)
        p.set_defaults(handler=_handler(bench))


def _handler(bench: Benchmark):
    def handle(args) -> int:
        return emit(bench.run(args), out_dir=args.out_dir, save=not args.no_save, as_json=args.json)

    return handle

