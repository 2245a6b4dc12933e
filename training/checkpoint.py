"""Epoch checkpoints for `--resume`: safetensors for tensors, JSON for everything else. Nothing is pickled.

A checkpoint directory holds
- `checkpoint.safetensors`: the trained tensors (`model/<name>`), the optimizer's per-parameter state
  (`optim/<index>/<key>`), the RNG states (`rng/torch`, `rng/cuda<i>`);
- `checkpoint.json`: format, completed epoch, global step, the scheduler's state, the optimizer's
  param groups, the training history and the run's identity (method, structure, data and backbone
  fingerprints, hyper-parameters).

Both files are written to temporary names and renamed, the tensors first; the safetensors metadata
repeats the epoch, so a crash between the two renames is detected instead of resuming a mix.
A resumed run must have the same identity: anything else would not continue the same run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from training.errors import CheckpointError

FORMAT = "restune-checkpoint"
FORMAT_VERSION = 1
TENSORS = "checkpoint.safetensors"
STATE = "checkpoint.json"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _optimizer_split(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entry in meta.get("plain_state", {}).items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: str | Path, *, model_state: dict[str, torch.Tensor], optimizer, scheduler,
                    epoch: int, global_step: int, history: list, identity: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
    optim_tensors, optim_meta = _optimizer_split(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = state
    _atomic_write(directory / TENSORS, save(tensors, metadata={"format": FORMAT, "epoch": str(epoch)}))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "epoch": epoch, "global_step": global_step,
             "scheduler": sched, "optimizer": optim_meta, "history": history, "identity": identity}
    _atomic_write(directory / STATE, json.dumps(state, indent=1).encode())
    return directory


def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(state JSON, tensors) of a checkpoint directory (or its checkpoint.json); CheckpointError if unusable."""
    path = Path(path)
    directory = path.parent if path.name in (STATE, TENSORS) else path
    state_path, tensor_path = directory / STATE, directory / TENSORS
    missing = [str(p) for p in (state_path, tensor_path) if not p.is_file()]
    if missing:
        raise CheckpointError(f"--resume {path}: no checkpoint there (missing {', '.join(missing)})")
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"--resume {path}: {state_path} is not readable JSON ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"--resume {path}: {state_path} is not a restune checkpoint (format {FORMAT} v1)")
    try:
        with safe_open(str(tensor_path), framework="pt") as f:
            epoch = (f.metadata() or {}).get("epoch")
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"--resume {path}: {tensor_path} is damaged ({exc})") from None
    if epoch != str(state.get("epoch")):
        raise CheckpointError(
            f"--resume {path}: {TENSORS} holds epoch {epoch} but {STATE} says {state.get('epoch')} "
            "(a write was interrupted); resume from an older copy or start again"
        )
    return state, tensors


def identity_problems(saved: dict, current: dict) -> list[str]:
    problems = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            problems.append(f"{key}: checkpoint has {saved.get(key)!r}, this run has {current.get(key)!r}")
    return problems


def restore(state: dict, tensors: dict[str, torch.Tensor], *, model, optimizer, scheduler, identity: dict) -> None:
    """Load a checkpoint into a freshly built run; refuses a checkpoint of a different run."""
    problems = identity_problems(state.get("identity", {}), identity)
    if problems:
        raise CheckpointError(
            ["the checkpoint was written by a different run; resume with the same settings and data "
             "(or start without --resume):"] + problems
        )
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    params = dict(model.named_parameters())
    problems = [f"checkpoint lacks trained tensor {k!r}" for k, p in params.items()
                if p.requires_grad and k not in model_state]
    problems += [f"checkpoint tensor {k!r} does not belong to this model" for k in model_state if k not in params]
    if problems:
        raise CheckpointError(problems)
    with torch.no_grad():
        for name, value in model_state.items():
            params[name].copy_(value)
    optimizer.load_state_dict(_optimizer_join(tensors, state["optimizer"]))
    scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(scheduler.lr_lambdas)})
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
