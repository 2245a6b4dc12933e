"""`restune generate`: text-to-image with style tuners, locally or on a server."""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

from clients.client import RestuneClient
from restuning.errors import ConfigError
from tuner_store.artifact import read_artifact
from tuner_store.errors import NotFoundError
from tuner_store.urls import DEFAULT_STORE_URL, open_store


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
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the model's)")
    p.add_argument("--seed", type=int, default=None, help="prompt i uses seed+i for every style (default random)")
    p.add_argument("--height", type=int, default=None, help="default: the model's size (512 for SD v1.5)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--sampler", default=None, help="pndm (= plms) or ddim (default: the model's)")
    p.add_argument("--diffusion-model", default=os.environ.get("RESTUNE_DIFFUSION_MODEL", "tiny-random"),
                   help="local run: 'tiny-trained', 'tiny-random' or a diffusers directory (default "
                        "$RESTUNE_DIFFUSION_MODEL)")
    p.add_argument("--store", default=None, help="local run: store URL holding the style tuners "
                                                 "(default $RESTUNE_STORE or file://./data/tuners)")
    p.add_argument("--tuner-file", action="append", default=[], metavar="FILE",
                   help="local run: a style tuner artifact file (repeatable); its name is the style")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="auto (float16 on CUDA, float32 on CPU), float32, bfloat16 …")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_generate)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def image_filename(index: int, prompt: str, style: str, seed: int) -> str:
    return f"{index:02d}-{_slug(style, 24)}-{_slug(prompt)}-{seed}.png"


def _load_style_tuners(pipeline, styles: list[str], store_url: str | None, files: list[str]) -> dict:
    """The requested styles' tuners: from artifact files first, then from the store."""
    tuners = {}
    for path in files:
        artifact = read_artifact(path, backbone_fingerprint=pipeline.fingerprint, backbone_name=pipeline.name)
        tuners[artifact.name] = pipeline.tuner_from_artifact(artifact)
    wanted = [s for s in dict.fromkeys(styles) if s != "base" and s not in tuners]
    if wanted:
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
        with RestuneClient(args.server) as client:
            response = client.generate(list(args.prompts), list(args.styles), **options)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(response["images"]):
            path = out_dir / image_filename(i, item["prompt"], item["style"], item["seed"])
            path.write_bytes(base64.b64decode(item["png_base64"]))
            saved.append({"prompt": item["prompt"], "style": item["style"], "seed": item["seed"], "path": str(path)})
        timings = response.get("timings_ms", {})
    else:
        from restuning.diffusion.pipeline import StylePipeline  # diffusers: the diffusion extra

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
