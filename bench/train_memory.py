"""`restune bench train-memory`: peak training memory and step time per method (paper Table 3b / §4.3).

Methods, each measured in its own fresh Python process so no allocator or RSS high-water mark leaks
from one to the next (one step = forward, cross-entropy, backward, AdamW step; random pixels and
labels, since memory and time do not depend on the content):

- full           every ViT weight trains (a copy of the backbone + a Linear head);
- restuning      Res-Tuning: MHA + FFN adapters (dim 10) inside the frozen ViT, gradients flow through it;
- bypass         Res-Tuning-Bypass: H + V adapters (dim 10) on every layer; the backbone runs under
                 no_grad (no autograd graph), the bypass reads the token positions its pooling needs;
- bypass_cached  the same bypass trained from feature-cache rows (x_0 … x_L already extracted): no
                 backbone forward in the step or the process (the one-time extraction pass is not part of
                 it); the backbone's weights stay loaded, as in the trainer (its final norm pools);
- linear         (only with --methods …,linear) linear probing on the frozen backbone.

Memory: on CUDA, `torch.cuda.max_memory_allocated` over the measured steps — the total, weights
included, which is what the paper's GB figures are. On the CPU, the peak resident set size of the
worker process (the kernel's high-water mark, VmHWM in /proc/self/status), nothing subtracted: it includes the Python + torch + timm libraries, which the `idle` row shows (a process
that imports everything and builds nothing), so CPU ratios of totals are diluted by that floor.
Step time: median over the measured steps after warm-up.

`python -m bench.train_memory --worker '{json}'` is the worker; it prints one JSON line.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time

import psutil
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from bench.common import machine_info
from restuning.backbones import create_backbone
from training.feature_cache import select_tokens
from training.methods import MethodSpec, build_model, trainable_parameters

log = logging.getLogger(__name__)

METHODS = ("full", "restuning", "bypass", "bypass_cached", "linear")
DEFAULT_METHODS = ("full", "restuning", "bypass", "bypass_cached")
PAPER = {"source": "Table 3b/3c (ViT-B/16, CIFAR-100, batch 32, A100)", "full_gb": 9.02, "restuning_gb": 6.85,
         "bypass_gb": 4.72, "linear_gb": 2.72, "bypass_over_full": 0.52}
TARGETS = {"bypass": 0.55, "bypass_cached": 0.30}


def _peak_rss_bytes() -> int:
    """This process's peak RSS.

    Linux: VmHWM of /proc/self/status, the high-water mark of this process image. Not ru_maxrss: Linux
    carries ru_maxrss across execve, so a worker forked from a big parent (a test runner) would report the
    parent's RSS at fork time.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


def _current_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def worker(options: dict) -> dict:
    """Measure one method in this (fresh) process."""
    method = options["method"]
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    if method == "idle":
        return {"method": "idle", "peak_rss_bytes": _peak_rss_bytes()}
    device = torch.device(options["device"])
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    backbone = create_backbone(options["backbone"], weights="random", device=device)
    spec = MethodSpec(method="bypass" if method == "bypass_cached" else method, dim=options["dim"],
                      pooling=options.get("pooling"))
    model = build_model(spec, backbone, [("task", options["num_classes"])], seed=0).to(device)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-3, weight_decay=0.05)
    b = options["batch_size"]
    images = torch.randn(b, 3, *backbone.info.image_size, device=device)
    labels = torch.randint(0, options["num_classes"], (b,), device=device)
    if method == "bypass_cached":
        # One batch of cache rows (the layers and token positions the head reads). Random values: memory and
        # time do not depend on them, and no backbone forward runs in this process, so its peak is the
        # training steps' alone (extraction is a one-time no-grad pass, measured by `bypass` minus its graph).
        n_tokens = model.positions().stop - model.positions().start
        cached: list = [None] * (max(model.layers) + 1)
        for layer in model.layers:
            cached[layer] = torch.randn(b, n_tokens, backbone.embed_dim, device=device)
        del images

    def inputs():
        if method == "bypass_cached":
            return cached
        if method in ("bypass", "linear"):
            return select_tokens(backbone.forward_features(images), model.layers, model.positions())
        return images

    def step():
        logits = model(inputs())["task"]
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _current_rss_bytes()
    times = []
    for i in range(options["warmup"] + options["steps"]):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        if i >= options["warmup"]:
            times.append((time.perf_counter() - start) * 1000.0)
    out = {
        "method": method,
        "trainable_params": sum(p.numel() for p in trainable_parameters(model)),
        "step_ms_median": statistics.median(times),
        "step_ms": [round(t, 3) for t in times],
        "rss_before_steps_bytes": rss_before,
        "peak_rss_bytes": _peak_rss_bytes(),
    }
    if cuda:
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    out["peak_bytes"] = out.get("cuda_max_allocated_bytes", out["peak_rss_bytes"])
    return out


def _run_worker(options: dict, timeout: float | None) -> dict:
    cmd = [sys.executable, "-m", "bench.train_memory", "--worker", json.dumps(options)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        if "out of memory" in (proc.stderr or "").lower():
            return {"method": options["method"], "error": "out of memory"}
        return {"method": options["method"], "error": f"worker exited with {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def run_train_memory(*, backbone: str = "vit_base_patch16_224", batch_size: int = 32, device: str = "cpu",
                     methods=DEFAULT_METHODS, steps: int | None = None, warmup: int | None = None,
                     num_classes: int = 100, dim: int = 10, pooling: str | None = None, threads: int | None = None,
                     timeout: float | None = None, progress: bool = True) -> dict:
    cuda = device.startswith("cuda")
    options = {"backbone": backbone, "batch_size": batch_size, "device": device, "num_classes": num_classes,
               "dim": dim, "pooling": pooling, "threads": threads,
               "steps": steps if steps is not None else (10 if cuda else 3),
               "warmup": warmup if warmup is not None else (3 if cuda else 1)}
    results: dict[str, dict] = {}
    todo = ["idle", *methods]
    for method in tqdm(todo, desc="train-memory", unit="method", disable=not progress):
        results[method] = _run_worker({**options, "method": method}, timeout)
    payload = {"benchmark": "train-memory", **machine_info(device), "options": options,
               "memory_measure": "cuda max_memory_allocated (weights included)" if cuda else
               "peak RSS of a fresh worker process (VmHWM), Python + torch libraries included; "
               "see methods.idle for that floor",
               "methods": results, "paper": PAPER, "targets_vs_full": TARGETS}
    full = results.get("full")
    if full and "error" not in full:
        ratios = {}
        idle = results["idle"].get("peak_rss_bytes", 0)
        for method, r in results.items():
            if method in ("idle", "full") or "error" in r:
                continue
            ratio = {"peak_memory": round(r["peak_bytes"] / full["peak_bytes"], 4),
                     "step_time": round(r["step_ms_median"] / full["step_ms_median"], 4)}
            if not cuda:
                ratio["peak_memory_above_idle"] = round(
                    (r["peak_bytes"] - idle) / max(1, full["peak_bytes"] - idle), 4)
            if method in TARGETS:
                ratio["target_peak_memory"] = TARGETS[method]
                ratio["meets_target"] = ratio["peak_memory"] <= TARGETS[method]
            ratios[method] = ratio
        payload["ratios_vs_full"] = ratios
    return payload


def format_report(payload: dict) -> str:
    lines = [f"{payload['device']}, torch {payload['torch']}, {payload['options']['backbone']}, "
             f"batch {payload['options']['batch_size']}, {payload['options']['steps']} measured steps",
             f"memory: {payload['memory_measure']}",
             f"{'method':>14} {'params':>12} {'peak MB':>10} {'step ms':>10} {'mem/full':>9} {'time/full':>9}"]
    ratios = payload.get("ratios_vs_full", {})
    for method, r in payload["methods"].items():
        if "error" in r:
            lines.append(f"{method:>14} {r['error']}")
            continue
        if method == "idle":
            lines.append(f"{'idle':>14} {'':>12} {r['peak_rss_bytes'] / 2**20:>10.1f}")
            continue
        ratio = ratios.get(method, {})
        mem = f"{ratio['peak_memory']:.3f}" if ratio else ("1.000" if method == "full" else "")
        tim = f"{ratio['step_time']:.3f}" if ratio else ("1.000" if method == "full" else "")
        lines.append(f"{method:>14} {r['trainable_params']:>12,} {r['peak_bytes'] / 2**20:>10.1f} "
                     f"{r['step_ms_median']:>10.1f} {mem:>9} {tim:>9}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(worker(json.loads(sys.argv[2]))), flush=True)
    else:
        print("usage: restune bench train-memory [...]  (this module's --worker mode is internal)", file=sys.stderr)
        sys.exit(2)
