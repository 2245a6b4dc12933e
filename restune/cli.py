"""The `restune` command line, composed in this one module.

Every package contributes its own commands through a `register(groups)` function in its `commands`
module; this module alone imports every package, wires them together, and turns user-facing errors into
one-line messages with a non-zero exit code. Command modules stay light (argparse and config only); their
handlers import torch, FastAPI or Redis when they run, because those come with optional extras and
`restune --help` should not wait for them.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass

from bench import commands as bench_commands
from clients import commands as client_commands
from clients import generate_commands
from restuning import commands as model_commands
from restuning.errors import RestuneError
from server import commands as server_commands
from training import base_diffusion_commands, style_commands
from training import commands as training_commands
from tuner_store import commands as store_commands

# Long-running commands report their progress as INFO log lines; every other command prints its answer
# and nothing else unless -v is given.
PROGRESS_COMMANDS = ("train", "bench", "demo", "serve")
# Libraries that log each request at INFO (httpx: "HTTP Request: …"); heard only with -v.
CHATTY_LIBRARIES = ("httpx", "httpcore")
# The extra that brings each optional third-party package, for the message when one is missing.
EXTRA_OF = {
    "torch": "model", "torchvision": "model", "timm": "model", "safetensors": "model", "numpy": "model",
    "PIL": "model", "tqdm": "model", "sklearn": "training", "matplotlib": "bench", "psutil": "server",
    "diffusers": "diffusion", "transformers": "diffusion", "redis": "redis", "fastapi": "server",
    "uvicorn": "server", "starlette": "server", "multipart": "server", "prometheus_client": "server",
    "triton": "model",
}


@dataclass
class CommandGroups:
    """The subparser collections packages add their commands to."""

    top: argparse._SubParsersAction
    train: argparse._SubParsersAction
    bench: argparse._SubParsersAction
    tuners: argparse._SubParsersAction


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restune",
        description="Multi-task inference on one frozen backbone with hot-loaded Res-Tuning-Bypass heads.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    train = top.add_parser("train", help="train a tuner").add_subparsers(dest="train_command", metavar="KIND")
    train.required = True
    bench = top.add_parser("bench", help="run a benchmark").add_subparsers(dest="bench_command", metavar="BENCH")
    bench.required = True
    tuners = top.add_parser("tuners", help="manage tuner artifacts in a store or on a server").add_subparsers(
        dest="tuners_command", metavar="ACTION"
    )
    tuners.required = True
    groups = CommandGroups(top=top, train=train, bench=bench, tuners=tuners)
    model_commands.register(groups)
    store_commands.register(groups)
    training_commands.register(groups, diffusion_demo=bench_commands.diffusion_demo)
    style_commands.register(groups)
    base_diffusion_commands.register(groups)
    server_commands.register(groups, before=training_commands.seed_demo_store, hints=training_commands.serve_hints)
    client_commands.register(groups)
    generate_commands.register(groups)
    bench_commands.register(groups)
    return parser


def _missing_extra(exc: ModuleNotFoundError) -> str | None:
    root = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(root)
    if extra is None:
        return None
    return f"this command needs {root!r}, which comes with the '{extra}' extra: pip install 'restune[{extra}]'"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        level = logging.DEBUG
    else:
        level = logging.INFO if args.command in PROGRESS_COMMANDS else logging.WARNING
        for name in CHATTY_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except RestuneError as exc:
        print(f"restune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("restune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and friends: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 0
    except ModuleNotFoundError as exc:
        message = _missing_extra(exc)
        if message is None or args.verbose:
            raise
        print(f"restune: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # one line for the user; -v shows the traceback
        if args.verbose:
            raise
        print(f"restune: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
