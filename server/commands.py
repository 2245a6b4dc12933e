"""`restune serve`."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from restuning.errors import ConfigError
from restuning.options import add_options, given_options
from server.settings import ServerSettings

log = logging.getLogger(__name__)

def add_serve_args(p: argparse.ArgumentParser) -> None:
    add_options(p, ServerSettings)


def settings_from_args(args):
    try:
        return ServerSettings(**given_options(args, ServerSettings))
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
    from server.app import create_app  # torch + FastAPI (server extra): the command line builds without them
    from server.shutdown import serve_until_drained

    preflight(settings)
    if before is not None:
        before(settings)
    app = create_app(settings)
    url = f"http://{settings.host}:{settings.port}"
    print(f"restune serving on {url}  (OpenAPI docs: {url}/docs)", flush=True)
    for hint in hints:
        print(hint, flush=True)
    return serve_until_drained(app, settings)


def preflight(settings) -> None:
    """Settings that cannot work, refused in one line before the backbone loads (the server checks them again)."""
    from restuning.backbones import describe_backbone  # torch + timm (server extra)
    from server.state import check_resident_budget
    from tuner_store.errors import StoreError
    from tuner_store.kinds import CLASSIFICATION
    from tuner_store.urls import open_store

    try:
        with open_store(settings.store) as store:
            sizes = [r.size_bytes for r in store.latest().values() if r.kind == CLASSIFICATION.name]
    except StoreError:  # away now: the server retries; the budget is checked against a default tuner
        sizes = []
    check_resident_budget(settings, sizes, describe_backbone(settings.backbone)[0])
