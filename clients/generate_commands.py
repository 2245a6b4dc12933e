"""Image-generation commands: `restune generate` (locally or on a server) and `restune bench generate`."""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def register(groups) -> None:
    p = groups.top.add_parser(
        "generate", help="text-to-image with style tuners, many styles in one batched pass",
        description="Generate one image per (prompt, style) pair. Without --server the model runs here "
                    "(--diffusion-model, style tuners from --store); with --server the request goes to "
                    "the server's POST /v1/generate.",
    )
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="one or more prompts")
    p.add_argument("--styles", type=_csv, default=["base"], help="comma-separated style names; 'base' = no tuner")
    p.add_argument("--out", default="generated", help="folder for the PNGs (default ./generated)")
    p.add_argument("--server", default=None, help="server URL: generate there instead of locally")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 50)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default 3.0)")
    p.add_argument("--seed", type=int, default=None, help="prompt i uses seed+i for every style (default random)")
    p.add_argument("--height", type=int, default=None, help="default: the model's size (512 for SD v1.5)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--sampler", default=None, help="pndm (= plms, default) or ddim")
    p.add_argument("--diffusion-model", default=os.environ.get("RESTUNE_DIFFUSION_MODEL", "tiny-random"),
                   help="local run: 'tiny-random' or a diffusers directory (default $RESTUNE_DIFFUSION_MODEL)")
    p.add_argument("--store", default=None, help="local run: store URL holding the style tuners "
                                                 "(default $RESTUNE_STORE or file://./data/tuners)")
    p.add_argument("--tuner-file", action="append", default=[], metavar="FILE",
                   help="local run: a style tuner artifact file (repeatable); its name is the style")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="auto (float16 on CUDA, float32 on CPU), float32, bfloat16 …")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_generate)

    b = groups.bench.add_parser("generate", help="S styles x P prompts in one pass vs S sequential runs")
    b.add_argument("--diffusion-model", default="tiny-random", help="'tiny-random' or a diffusers directory")
    b.add_argument("--styles", type=int, default=10, help="number of styles S (default 10)")
    b.add_argument("--prompts", type=int, default=2, help="number of prompts P (default 2)")
    b.add_argument("--steps", type=int, default=None, help="default: 10 for tiny-random, 50 for a real model")
    b.add_argument("--guidance-scale", type=float, default=3.0)
    b.add_argument("--height", type=int, default=None)
    b.add_argument("--width", type=int, default=None)
    b.add_argument("--tuners", choices=("trained", "random"), default=None,
                   help="style tuners: quick-trained here (default for tiny-random) or random non-zero")
    b.add_argument("--train-steps", type=int, default=60, help="steps per quick-trained style (lr 1e-3)")
    b.add_argument("--store", default=None, help="use this store's diffusion tuners instead")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", default=None)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    b.add_argument("--out-dir", default="bench/results")
    b.add_argument("--no-save", action="store_true", help="do not write bench/results files")
    b.add_argument("--json", action="store_true", help="print the JSON result")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(handler=_bench_generate)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def image_filename(index: int, prompt: str, style: str, seed: int) -> str:
    return f"{index:02d}-{_slug(style, 24)}-{_slug(prompt)}-{seed}.png"


def _load_style_tuners(pipeline, styles: list[str], store_url: str | None, files: list[str]) -> dict:
    """The requested styles' tuners: from artifact files first, then from the store."""
    from restuning.errors import ConfigError
    from tuner_store.artifact import read_artifact

    tuners = {}
    for path in files:
        artifact = read_artifact(path, backbone_fingerprint=pipeline.fingerprint, backbone_name=pipeline.name)
        tuners[artifact.name] = pipeline.tuner_from_artifact(artifact)
    wanted = [s for s in dict.fromkeys(styles) if s != "base" and s not in tuners]
    if wanted:
        from tuner_store.store import DEFAULT_STORE_URL, open_store
        from tuner_store.errors import NotFoundError

        url = store_url or os.environ.get("RESTUNE_STORE", DEFAULT_STORE_URL)
        missing = []
        with open_store(url) as store:
            for name in wanted:
                try:
                    tuners[name] = pipeline.tuner_from_artifact(store.get(name))
                except NotFoundError:
                    missing.append(name)
        if missing:
            raise ConfigError(f"style(s) {missing} not found in the store {url} (nor in --tuner-file); "
                              "train one with `restune train style --push URL`")
    return tuners


def _generate(args) -> int:
    out_dir = Path(args.out)
    options = {"steps": args.steps, "guidance_scale": args.guidance_scale, "seed": args.seed,
               "height": args.height, "width": args.width, "sampler": args.sampler}
    saved = []
    if args.server:
        from clients.client import RestuneClient

        with RestuneClient(args.server) as client:
            response = client.generate(list(args.prompts), list(args.styles), **options)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(response["images"]):
            path = out_dir / image_filename(i, item["prompt"], item["style"], item["seed"])
            path.write_bytes(base64.b64decode(item["png_base64"]))
            saved.append({"prompt": item["prompt"], "style": item["style"], "seed": item["seed"], "path": str(path)})
        timings = response.get("timings_ms", {})
    else:
        from restuning.diffusion.pipeline import StylePipeline

        pipeline = StylePipeline.load(args.diffusion_model, device=args.device, dtype=args.dtype)
        # Check the request before loading tuners, so a bad size or step count fails fast.
        pipeline.validate(list(args.prompts), list(args.styles),
                          [s for s in args.styles if s != "base"], **options)
        tuners = _load_style_tuners(pipeline, list(args.styles), args.store, args.tuner_file)
        result = pipeline.generate(list(args.prompts), list(args.styles), tuners, progress=not args.no_progress,
                                   **options)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(result.images):
            path = out_dir / image_filename(i, image.prompt, image.style, image.seed)
            image.image.save(path)
            saved.append({"prompt": image.prompt, "style": image.style, "seed": image.seed, "path": str(path)})
        timings = {k: round(v, 2) for k, v in result.timings_ms.items()}
    if args.json:
        print(json.dumps({"images": saved, "timings_ms": timings}, indent=2))
    else:
        for item in saved:
            print(f"{item['path']}  [{item['style']}, seed {item['seed']}]")
        print("timings (ms): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return 0


def _bench_generate(args) -> int:
    import torch

    from restuning.benchmarking import device_slug, write_results
    from training.diffusion_bench import run_generate_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    payload, grid = run_generate_bench(
        model=args.diffusion_model, styles=args.styles, prompts=args.prompts, steps=args.steps,
        guidance_scale=args.guidance_scale, height=args.height, width=args.width, device=args.device,
        dtype=args.dtype, tuners=args.tuners, train_steps=args.train_steps, store=args.store,
        repeats=args.repeats, warmup=args.warmup, seed=args.seed, progress=not args.no_progress,
    )
    if not args.no_save:
        from restuning.diffusion.pipeline import resolve_device

        slug = f"{_slug(payload['model'], 32)}-{device_slug(resolve_device(args.device))}"
        grid_path = Path(args.out_dir) / f"generate-grid-{slug}.png"
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(grid_path)
        payload["grid_png"] = str(grid_path)
        path = write_results(f"generate-{slug}", payload, args.out_dir)
        print(f"wrote {path}")
        print(f"wrote {grid_path}")
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        m = payload["median_ms"]
        print(f"{payload['device']}, {payload['model']}, {payload['styles']} styles x {payload['prompts']} prompts, "
              f"{payload['steps']} steps, {payload['height']}x{payload['width']}, tuners: {payload['tuners']}")
        print(f"one pass   {m['one_pass']:10.1f} ms  (U-Net batch {payload['one_pass_unet_batch']})")
        print(f"sequential {m['sequential']:10.1f} ms  ({payload['styles']} runs, U-Net batch "
              f"{payload['sequential_unet_batch']})")
        print(f"one pass / sequential = {payload['one_pass_over_sequential']:.3f}  "
              f"(max pixel diff between the two: {payload['max_abs_pixel_diff_one_pass_vs_sequential']})")
    return 0

