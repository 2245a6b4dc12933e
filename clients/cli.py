"""The `restune` command line.

Every package contributes its own commands through a `register(groups)`
function in its `commands` module, so this file only wires them together and
turns user-facing errors into one-line messages with a non-zero exit code.
Command modules import heavy dependencies (torch, FastAPI, Redis) lazily inside
their handlers, so `restune --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from dataclasses import dataclass

# Packages that contribute commands; a missing one is skipped.
COMMAND_MODULES = (
    "restuning.commands",
    "tuner_store.commands",
    "training.commands",
    "server.commands",
    "clients.commands",
    "training.style_commands", "clients.generate_commands",  # diffusion: train style; generate, bench generate
)


# Long-running commands report their progress as INFO log lines; every other command prints its answer
# and nothing else unless -v is given.
PROGRESS_COMMANDS = ("train", "bench", "demo", "serve")
# Libraries that log each request at INFO (httpx: "HTTP Request: …"); heard only with -v.
CHATTY_LIBRARIES = ("httpx", "httpcore")


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
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name or module_name.startswith(f"{exc.name}."):
                continue
            raise
        module.register(groups)
    return parser


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
    from restuning.errors import RestuneError

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
    except Exception as exc:  # one line for the user; -v shows the traceback
        if args.verbose:
            raise
        print(f"restune: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
