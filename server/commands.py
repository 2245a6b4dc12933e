"""`restune serve`."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from restuning.errors import ConfigError
from server.settings import ServerSettings

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
}


def add_serve_args(p: argparse.ArgumentParser) -> None:
    for name, (kind, help_text) in SERVE_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=help_text)
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=None,
                   help="allow CORS from this origin (repeatable; CORS is off by default)")
    p.add_argument("--demo-if-empty", action="store_true", default=None,
                   help="when the store holds no tuners, train and push the 19 demo tuners first")


def settings_from_args(args):
    given = {k: v for k, v in vars(args).items() if k in {*SERVE_FLAGS, "cors_origins", "demo_if_empty"} and v is not None}
    try:
        return ServerSettings(**given)
    except ValidationError as exc:
        raise ConfigError([f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]) from None


def register(groups, *, before: Callable[[object], None] | None = None,
             hints: Callable[[object], Sequence[str]] = lambda settings: ()) -> None:
    """`restune serve`; the command line composes what runs before serving and the hints printed on start."""
    p = groups.top.add_parser("serve", help="run the multi-task inference server")
    add_serve_args(p)

    def handle(args) -> int:
        settings = settings_from_args(args)
        return serve(settings, before=before, hints=hints(settings))

    p.set_defaults(handler=handle)


def serve(settings, *, before: Callable[[object], None] | None = None, hints: Sequence[str] = ()) -> int:
    """Run the server until it is stopped; `before(settings)` runs first (the command line seeds a demo store)."""
    import uvicorn  # the server extra: the command line builds without it

    from server.app import create_app  # torch + FastAPI (server extra)

    if before is not None:
        before(settings)
    app = create_app(settings)
    url = f"http://{settings.host}:{settings.port}"
    print(f"restune serving on {url}  (OpenAPI docs: {url}/docs)", flush=True)
    for hint in hints:
        print(hint, flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0
