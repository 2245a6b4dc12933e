"""`restune serve` (and the server benchmarks)."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

# flag -> (type, help); each is also RESTUNE_<NAME> in the environment
SERVE_FLAGS = {
    "backbone": (str, "timm ViT name (default vit_tiny_patch16_224)"),
    "weights": (str, "pretrained | random | random:SEED | auto (default) | path.safetensors"),
    "store": (str, "tuner store URL: file:///path (default ./data/tuners) or redis://host:port/db"),
    "host": (str, "listen address (default 127.0.0.1; non-loopback needs --admin-token)"),
    "port": (int, "listen port (default 8000)"),
    "device": (str, "auto (CUDA when present) | cpu | cuda | cuda:N"),
    "dtype": (str, "auto | float32 | float16 | bfloat16"),
    "max_batch_size": (int, "images per backbone forward (default 32)"),
    "max_queue_delay_ms": (float, "how long a request may wait for others to batch with (default 5)"),
    "max_queue_size": (int, "requests waiting before 503 (default 256)"),
    "feature_cache_mb": (float, "feature cache size in MiB (default 256, 0 disables)"),
    "admin_token": (str, "bearer token required for tuner writes"),
    "max_upload_mb": (float, "artifact upload limit in MiB (default 64)"),
    "max_image_mb": (float, "image upload limit in MiB (default 20)"),
    "diffusion_model": (str, "a diffusers directory or tiny-random; enables POST /v1/generate"),
    "kernel_backend": (str, "auto | torch | triton"),
    "torch_threads": (int, "intra-op threads of the model (default 0: all cores, torch's default)"),
    "log_level": (str, "uvicorn log level (default info)"),
    "drain_delay_s": (float, "after SIGTERM: seconds /readyz answers 503 while new connections are still served (default 2)"),
    "drain_timeout_s": (float, "after that: longest wait in seconds for requests in flight and queued (default 20)"),
}


def add_serve_args(p: argparse.ArgumentParser) -> None:
    for name, (kind, help_text) in SERVE_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=help_text)
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=None,
                   help="allow CORS from this origin (repeatable; CORS is off by default)")
    p.add_argument("--demo-if-empty", action="store_true", default=None,
                   help="when the store holds no tuners, train and push the 19 demo tuners first")


def settings_from_args(args):
    from pydantic import ValidationError

    from restuning.errors import ConfigError
    from server.settings import ServerSettings

    given = {k: v for k, v in vars(args).items() if k in {*SERVE_FLAGS, "cors_origins", "demo_if_empty"} and v is not None}
    try:
        return ServerSettings(**given)
    except ValidationError as exc:
        raise ConfigError([f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]) from None


def register(groups) -> None:
    p = groups.top.add_parser("serve", help="run the multi-task inference server")
    add_serve_args(p)
    p.set_defaults(handler=_serve)

    b = groups.bench.add_parser("serve", help="a real server on loopback under concurrent clients vs the raw engine")
    b.add_argument("--backbone", default="vit_tiny_patch16_224")
    b.add_argument("--tasks", type=int, default=19, help="random tuners loaded (default 19)")
    b.add_argument("--concurrency", type=int, default=16)
    b.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    b.add_argument("--max-batch-size", type=int, default=None, help="server batch cap (default concurrency / 2)")
    b.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    b.add_argument("--rounds", type=int, default=3,
                   help="server and raw engine take turns this many times (default 3)")
    b.add_argument("--hotload-puts", type=int, default=20, help="put-to-serving samples (0 skips)")
    b.add_argument("--out-dir", default="bench/results")
    b.add_argument("--no-save", action="store_true")
    b.add_argument("--json", action="store_true")
    b.set_defaults(handler=_bench_serve)

    from server.bench_soak import register_soak

    register_soak(groups)


def sample_curl(host: str, port: int) -> str:
    import os

    from training.demo_tasks import SAMPLE_IMAGE_PATH

    path = os.path.relpath(SAMPLE_IMAGE_PATH) if str(SAMPLE_IMAGE_PATH).startswith(os.getcwd()) else SAMPLE_IMAGE_PATH
    return f"curl -s -X POST http://{host}:{port}/v1/classify -F file=@{path} -F top_k=3"


def _serve(args) -> int:
    from server.app import create_app

    settings = settings_from_args(args)
    if settings.demo_if_empty:
        from tuner_store.store import open_store

        store = open_store(settings.store)
        if not store.latest():
            from training.demo import run_demo

            from server.torch_threads import DEFAULT_TORCH_THREADS, call_on_passing_thread

            log.info("the store %s is empty: training the 19 demo tuners first (restune demo)", settings.store)
            # on a thread that ends: its OpenMP team must not outlive it next to the server's (see torch_threads)
            call_on_passing_thread(lambda: run_demo(settings.store, backbone=settings.backbone, weights=settings.weights),
                                   threads=settings.torch_threads or DEFAULT_TORCH_THREADS, name="restune-demo")
        store.close()
    app = create_app(settings)
    url = f"http://{settings.host}:{settings.port}"
    print(f"restune serving on {url}  (OpenAPI docs: {url}/docs)", flush=True)
    try:
        print(f"try:  {sample_curl(settings.host, settings.port)}", flush=True)
    except ImportError:
        pass
    from server.shutdown import serve_until_drained

    return serve_until_drained(app, settings)


def _bench_serve(args) -> int:
    import json

    from restuning.benchmarking import device_slug, write_results
    from server.bench_serve import run_serve_bench

    payload = run_serve_bench(
        backbone_name=args.backbone, tasks=args.tasks, concurrency=args.concurrency, duration=args.duration,
        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
        hotload_puts=args.hotload_puts, rounds=args.rounds,
    )
    if not args.no_save:
        path = write_results(f"serve-{args.backbone}-c{args.concurrency}-{device_slug('cpu')}", payload, args.out_dir)
        print(f"wrote {path}")
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        server, raw = payload["server"], payload["raw_engine"]
        print(f"server: {server['throughput_rps']} req/s, latency {server['latency_ms']}, "
              f"mean batch {server['mean_batch_size']}, errors {server['errors'] or 'none'}")
        print(f"server model thread: backbone {server['mean_backbone_ms']} ms + heads {server['mean_heads_ms']} ms "
              f"per batch, busy {server['model_busy_fraction']} of the time")
        print(f"raw engine at batch {raw['batch']}: {raw['throughput_ips']} img/s, "
              f"median batch {raw['median_batch_ms']} ms")
        print(f"throughput ratio server / raw engine: {payload['throughput_ratio']}")
        if payload["hotload"]:
            print(f"put-to-serving latency: {payload['hotload']}")
    return 0
