"""Client-side commands: `restune classify` (talks to a running server)."""
from __future__ import annotations

import json
import os

from clients.client import DEFAULT_SERVER_URL, RestuneClient


def default_server() -> str:
    return os.environ.get("RESTUNE_SERVER", DEFAULT_SERVER_URL)


def register(groups) -> None:
    p = groups.top.add_parser("classify", help="classify an image across tasks on a running server")
    p.add_argument("image", help="image file (PNG, JPEG, …)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: every loaded tuner)")
    p.add_argument("--top-k", type=int, default=None, help="labels per task")
    p.add_argument("--server", default=None, help="server URL (default $RESTUNE_SERVER or http://127.0.0.1:8000)")
    p.add_argument("--json", action="store_true", help="print the raw JSON response")
    p.set_defaults(handler=_classify)


def _classify(args) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    with RestuneClient(args.server or default_server()) as client:
        response = client.classify(args.image, tasks=tasks, top_k=args.top_k)
    if args.json:
        print(json.dumps(response, indent=2))
        return 0
    width = max((len(name) for name in response["results"]), default=4)
    for name, result in response["results"].items():
        ranked = ", ".join(f"{label} {score:.3f}" for label, score in zip(result["labels"], result["scores"]))
        print(f"{name:<{width}}  {ranked}   [{result['tuner']}]")
    timings = response.get("timings_ms", {})
    print("timings (ms): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return 0
