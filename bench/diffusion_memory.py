"""`restune bench train-memory --diffusion`: peak memory and step time of Res-Tuning-Bypass style training
vs full U-Net fine-tuning, in one run (paper Table 6 / §5.2: the bypass needs 0.29× the memory and
0.41× the time of full fine-tuning on SD v1.5).

Each method runs in its own fresh process (multiprocessing "spawn"), so one method's allocator
high-water mark cannot leak into the other's. One training step is the whole real step: VAE
encode (frozen), U-Net forward, noise-prediction loss, backward, AdamW step (lr 1e-4). Inputs are
random pixels; memory and time do not depend on the content.

- bypass: U-Net, VAE, text encoder frozen (no autograd graph inside them); the bypass trains.
- full:   every U-Net parameter trains (VAE and text encoder frozen, as in SD fine-tuning); no bypass.

Both keep the U-Net weights in float32; on CUDA both run under bfloat16 autocast (mixed precision),
on the CPU in float32. Memory: CUDA — `torch.cuda.max_memory_allocated` over the measured steps
(the total, weights included, which is what the paper's GB figures are); CPU — the process's peak
resident set size sampled every 2 ms during the steps, minus the RSS right before them
("training_extra"), and the absolute peak (which includes ~0.5 GB of Python/torch libraries, so
CPU ratios of totals are diluted).

Defaults: the model is tiny-random (or $RESTUNE_DIFFUSION_MODEL); batch 8 for a real model (Table 11), 4 for
tiny-random; the model's own resolution; 5 measured steps after 2 warm-up steps.
"""
from __future__ import annotations

import multiprocessing
import os
import statistics
import threading
import time

import psutil
import torch
from torch.nn import functional as F

from bench.common import device_slug, machine_info
from bench.results import BenchResult
from restuning.devices import resolve_device
from restuning.diffusion.pipeline import StylePipeline
from training.style import noise_scheduler

PAPER = {"memory_ratio": 0.29, "time_ratio": 0.41, "full_gb": 72.77, "bypass_gb": 21.35,
         "source": "Table 6 (SD v1.5, 512², batch 8 per GPU, A100)"}
METHODS = ("bypass", "full")


class _RssSampler:
    """Peak RSS of this process, sampled in a background thread (CPU memory has no allocator high-water mark)."""

    def __init__(self, interval: float = 0.002):
        self._proc = psutil.Process()
        self.interval = interval
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def measure_method(method: str, options: dict) -> dict:
    """One method's peak memory and median step time (runs in a fresh process)."""
    if options.get("threads"):
        torch.set_num_threads(options["threads"])
    device = resolve_device(options["device"])
    pipeline = StylePipeline.load(options["model"], device=device, dtype="float32")
    batch, steps, warmup = options["batch_size"], options["steps"], options["warmup"]
    resolution = options["resolution"] or pipeline.default_size
    unet = pipeline.unet.unet
    if method == "bypass":
        tuner = pipeline.new_tuner(seed=0).train()
        params = list(tuner.parameters())
    else:
        tuner = None
        unet.requires_grad_(True)
        unet.train()
        params = [p for p in unet.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = noise_scheduler(pipeline.scheduler_config)
    context = pipeline.encode_prompts(["a photo in benchmark style"]).expand(batch, -1, -1)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(batch, 3, resolution, resolution, generator=gen) * 2 - 1
    amp = device.type == "cuda"

    def step():
        latents = pipeline.encode_images(pixels, generator=gen).float()
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen).to(device)
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            pred = pipeline.unet(noisy, t, context, bypass=tuner)
        loss = F.mse_loss(pred.float(), noise.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()  # a host sync, so the step time is the whole step

    # The baseline is taken before the warm-up steps, so "extra" includes what the first steps allocate
    # for good: gradients and the AdamW state (the full fine-tuning's dominant cost).
    times = []

    def run_steps():
        for i in range(warmup + steps):
            start = time.perf_counter()
            step()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run_steps()
        peak = torch.cuda.max_memory_allocated(device)
    else:
        before = psutil.Process().memory_info().rss
        with _RssSampler() as sampler:
            run_steps()
        peak = sampler.peak
    return {
        "method": method,
        "trainable_params": sum(p.numel() for p in params),
        "peak_bytes": int(peak),
        "before_steps_bytes": int(before),  # after loading, before the warm-up steps
        "training_extra_bytes": int(peak - before),
        "step_ms_median": statistics.median(times),
        "step_ms": [round(t, 2) for t in times],
        "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process RSS (sampled)",
    }


def _options(model: str | None, device: str, batch_size: int | None, resolution: int | None, steps: int | None,
             threads: int | None) -> dict:
    model = model or os.environ.get("RESTUNE_DIFFUSION_MODEL", "tiny-random")
    tiny = str(model).startswith("tiny-random")
    return {
        "model": str(model),
        "device": device or "auto",
        "batch_size": batch_size or (4 if tiny else 8),
        "resolution": resolution,
        "steps": steps or 5,
        "warmup": 2,
        "threads": threads,
    }


def diffusion_train_memory(*, model: str | None = None, device: str = "auto", batch_size: int | None = None,
                           resolution: int | None = None, steps: int | None = None,
                           threads: int | None = None) -> BenchResult:
    """Measure both methods, each in a fresh process."""
    options = _options(model, device, batch_size, resolution, steps, threads)
    ctx = multiprocessing.get_context("spawn")
    results = {}
    for method in METHODS:
        with ctx.Pool(1) as pool:
            try:
                results[method] = pool.apply(measure_method, (method, options))
            except RuntimeError as exc:  # CUDA OOM arrives as a RuntimeError subclass
                if "out of memory" not in str(exc).lower():
                    raise
                results[method] = {"method": method, "error": "out of memory", "detail": str(exc)[:300]}
    device = resolve_device(options["device"])
    payload = {"benchmark": "train-memory-diffusion", **machine_info(device), "options": options,
               "methods": results, "paper": PAPER}
    ok = all("error" not in r for r in results.values())
    if ok:
        b, f = results["bypass"], results["full"]
        payload["ratios_bypass_over_full"] = {
            "peak_memory": round(b["peak_bytes"] / f["peak_bytes"], 4),
            "training_extra_memory": round(b["training_extra_bytes"] / max(1, f["training_extra_bytes"]), 4),
            "step_time": round(b["step_ms_median"] / f["step_ms_median"], 4),
        }
    lines = [f"{payload['device']}, {options['model']}, batch {options['batch_size']}, "
             f"{options['steps']} measured steps"]
    for r in results.values():
        if "error" in r:
            lines.append(f"{r['method']:>7}: {r['error']}")
            continue
        lines.append(f"{r['method']:>7}: peak {r['peak_bytes'] / 2**20:9.1f} MiB  (+{r['training_extra_bytes'] / 2**20:.1f} "
                     f"MiB during steps)  step {r['step_ms_median']:8.1f} ms  trainable {r['trainable_params']:,}")
    if ok:
        ratios = payload["ratios_bypass_over_full"]
        lines.append(f"bypass / full: peak memory {ratios['peak_memory']:.3f}x, extra memory "
                     f"{ratios['training_extra_memory']:.3f}x, step time {ratios['step_time']:.3f}x  "
                     f"(paper: {PAPER['memory_ratio']}x memory, {PAPER['time_ratio']}x time)")
    slug = "".join(c if c.isalnum() else "-" for c in os.path.basename(options["model"].rstrip("/")).lower())
    return BenchResult(f"train-memory-diffusion-{slug}-{device_slug(device)}", payload, "\n".join(lines))
