"""`restune bench multitask`: one backbone pass + T heads vs the alternatives (paper Fig. 4).

Methods, all measured in one process, interleaved, medians after warm-up:
- backbone:     one frozen backbone forward;
- engine:       one backbone forward + all T bypass heads through the multi-task engine, on the
                kernel backend given by `kernel_backend` ("auto": fused Triton kernels for CUDA
                tensors, PyTorch on the CPU);
- engine_torch: the same engine forced onto the PyTorch reference kernels (fused vs unfused);
- engine_stage: the engine on the Triton kernels with one launch per bypass stage instead of one
                launch for the whole layer stack (CUDA only);
- naive:        one backbone forward + a Python loop over T separately built bypass heads;
- full_models:  T backbone forwards, each with its own linear head (T fully fine-tuned
                models; they share one set of weights in memory, the compute is the same).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import torch

from bench.common import device_slug, interleaved_medians, machine_info
from bench.results import BenchResult
from restuning import kernels
from restuning.backbones import create_backbone
from restuning.bypass import BypassConfig, build_bypass
from restuning.engine import MultiTaskEngine
from restuning.errors import ConfigError
from restuning.kernels.triton.bypass import bypass_mode

log = logging.getLogger(__name__)

# Class counts of the 19 VTAB-1K tasks (paper Table 9), cycled for any T.
VTAB_CLASSES = (100, 102, 47, 102, 37, 10, 397, 2, 10, 45, 5, 8, 6, 6, 4, 16, 16, 18, 9)
METHODS = ("backbone", "engine", "engine_torch", "engine_stage", "naive", "full_models")
DEFAULT_METHODS = ("backbone", "engine", "naive", "full_models")


def _heads(info, tasks: int, pooling: str, device, dtype) -> dict:
    heads = {}
    for i in range(tasks):
        config = BypassConfig.create(info, num_classes=VTAB_CLASSES[i % len(VTAB_CLASSES)], pooling=pooling)
        heads[f"task{i:02d}"] = build_bypass(config, info.embed_dim, seed=i).to(device=device, dtype=dtype).eval()
    return heads


def run_multitask_bench(
    *,
    backbone_name: str = "vit_base_patch16_224",
    batches: Sequence[int] = (1,),
    task_counts: Sequence[int] = (1, 2, 4, 8, 19),
    poolings: Sequence[str] = ("token", "avg"),
    methods: Sequence[str] = DEFAULT_METHODS,
    repeats: int = 7,
    warmup: int = 2,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    weights: str = "random",
    kernel_backend: str = "auto",
) -> dict:

    kernels.check_backend(kernel_backend)
    if "engine_stage" in methods and torch.device(device).type != "cuda":
        raise ConfigError("method engine_stage runs the Triton kernels and needs --device cuda")
    torch.manual_seed(0)
    backbone = create_backbone(backbone_name, weights=weights, device=device, dtype=dtype)
    info = backbone.info
    results: list[dict] = []
    ratios: list[dict] = []
    for batch in batches:
        images = torch.randn(batch, 3, *info.image_size, device=device, dtype=dtype)
        for pooling in poolings:
            for tasks in task_counts:
                heads = _heads(info, tasks, pooling, device, dtype)
                engine = MultiTaskEngine(backbone, heads, kernel_backend=kernel_backend)
                engine_torch = MultiTaskEngine(backbone, heads, kernel_backend="torch") if (
                    "engine_torch" in methods) else None
                engine_triton = MultiTaskEngine(backbone, heads, kernel_backend="triton") if (
                    "engine_stage" in methods) else None
                linear_heads = [torch.nn.Linear(info.embed_dim, h.config.num_classes).to(device, dtype) for h in heads.values()]
                positions = backbone.token_positions(pooling)

                def naive():
                    with torch.inference_mode():
                        feats = backbone.forward_features(images)
                        return [head(feats, backbone) for head in heads.values()]

                def full_models():
                    with torch.inference_mode():
                        out = []
                        for linear in linear_heads:
                            last = backbone.forward_features(images)[-1][:, positions]
                            out.append(linear(backbone.pool(last)))
                        return out

                def engine_stage():
                    with bypass_mode("stage"):
                        return engine_triton.classify(images)

                candidates = {
                    "backbone": lambda: backbone.forward_features(images),
                    "engine": lambda: engine.classify(images),
                    "engine_torch": lambda: engine_torch.classify(images),
                    "engine_stage": engine_stage,
                    "naive": naive,
                    "full_models": full_models,
                }
                medians = interleaved_medians(
                    {m: candidates[m] for m in methods}, repeats=repeats, warmup=warmup, device=device
                )
                for method, ms in medians.items():
                    results.append(
                        {"backbone": backbone_name, "batch": batch, "pooling": pooling, "tasks": tasks,
                         "method": method, "median_ms": round(ms, 3)}
                    )
                row = {"batch": batch, "pooling": pooling, "tasks": tasks}
                if "engine" in medians and "backbone" in medians:
                    row["engine_over_backbone"] = round(medians["engine"] / medians["backbone"], 4)
                if "engine" in medians and "full_models" in medians:
                    row["full_models_over_engine"] = round(medians["full_models"] / medians["engine"], 3)
                if "engine" in medians and "naive" in medians:
                    row["naive_over_engine"] = round(medians["naive"] / medians["engine"], 3)
                if "engine" in medians and "engine_torch" in medians:
                    row["engine_torch_over_engine"] = round(medians["engine_torch"] / medians["engine"], 3)
                if "engine_torch" in medians and "backbone" in medians:
                    row["engine_torch_over_backbone"] = round(medians["engine_torch"] / medians["backbone"], 4)
                if "engine_stage" in medians and "backbone" in medians:
                    row["engine_stage_over_backbone"] = round(medians["engine_stage"] / medians["backbone"], 4)
                ratios.append(row)
                log.info("batch %d, %s pooling, %d tasks: %s", batch, pooling, tasks,
                         {k: round(v, 2) for k, v in medians.items()})
    payload = machine_info(device)
    payload.update(
        benchmark="multitask",
        config={"backbone": backbone_name, "weights": backbone.info.weights, "dtype": str(dtype).replace("torch.", ""),
                "repeats": repeats, "warmup": warmup, "head": "H+V adapters, dim 10, all layers",
                "kernel_backend": kernel_backend, "engine_path": _engine_path(kernel_backend, device, dtype)},
        results=results,
        ratios=ratios,
    )
    return payload


def _engine_path(kernel_backend: str, device: str, dtype: torch.dtype) -> str:
    """What the `engine` method ran: 'triton' (fused kernels) or 'torch' (reference kernels)."""
    probe = torch.empty(0, device=device, dtype=dtype)
    try:
        return "triton" if kernels.use_triton(probe, kernel_backend) else "torch"
    except ConfigError:
        return "triton (unavailable here)"


def plot_multitask(payload: dict, path: Path) -> Path:
    """Time vs number of tasks per method, one panel per (batch, pooling), like the paper's Fig. 4."""
    matplotlib.use("Agg")  # files only, never a window: selected before pyplot loads a GUI backend
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg"), or pyplot would pick a GUI backend

    panels = sorted({(r["batch"], r["pooling"]) for r in payload["results"]})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (batch, pooling) in zip(axes[0], panels):
        for method in METHODS:
            rows = sorted(
                (r for r in payload["results"] if (r["batch"], r["pooling"], r["method"]) == (batch, pooling, method)),
                key=lambda r: r["tasks"],
            )
            if rows:
                ax.plot([r["tasks"] for r in rows], [r["median_ms"] for r in rows], marker="o", label=method)
        ax.set_title(f"{payload['config']['backbone']}, batch {batch}, {pooling} pooling")
        ax.set_xlabel("number of tasks")
        ax.set_ylabel("median time per request (ms)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(payload["device"], fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def multitask_result(payload: dict, device: str) -> BenchResult:
    dtype = payload["config"].get("dtype", "float32")
    name = f"multitask-{payload['config']['backbone']}-{'' if dtype == 'float32' else dtype + '-'}{device_slug(device)}"
    lines = [f"{payload['device']}, torch {payload['torch']}",
             f"{'batch':>5} {'pooling':>7} {'tasks':>5} {'method':>12} {'median ms':>10}"]
    lines += [f"{r['batch']:>5} {r['pooling']:>7} {r['tasks']:>5} {r['method']:>12} {r['median_ms']:>10.2f}"
              for r in payload["results"]]
    lines += [str(r) for r in payload["ratios"]]
    return BenchResult(name, payload, "\n".join(lines), figures={f"{name}.png": lambda p: plot_multitask(payload, p)})
