"""The classify path after the batcher: features (cache or one backbone pass), then every head at once."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from restuning.backbones.base import Backbone
from server.batcher import Job
from server.feature_cache import FeatureCache
from server.registry import TunerRegistry
from tuner_store.kinds import CLASSIFICATION


class UnknownTasksError(LookupError):
    def __init__(self, unknown: list[str], loaded: list[str]):
        self.unknown = unknown
        self.loaded = loaded
        super().__init__(f"unknown tasks {unknown}; loaded: {loaded}")


class NoTunersError(LookupError):
    pass


@dataclass
class ClassifyRequest:
    pixels: torch.Tensor  # [3, H, W] uint8, resized; normalised per batch by the runner
    cache_key: str
    tasks: list[str] | None  # None: every loaded classification tuner
    top_k: int
    probabilities: bool = False  # also every class's probability per task (the v2 protocol's FP32 [B, C] output)


class ClassifyRunner:
    def __init__(self, backbone: Backbone, registry: TunerRegistry, cache: FeatureCache, *, device, dtype,
                 normalize: Callable[[torch.Tensor], torch.Tensor], metrics=None):
        self.backbone = backbone
        self.normalize = normalize  # uint8 [B, 3, H, W] -> float [B, 3, H, W], on the tensor's device
        self.registry = registry
        self.cache = cache
        self.device = device
        self.dtype = dtype
        self.metrics = metrics

    def _features(self, requests: Sequence[ClassifyRequest]) -> tuple[list[torch.Tensor], float, int]:
        """[x_0 … x_L] for the batch, each [B, N, D]; backbone ms; number of images that ran the backbone."""
        cached = [self.cache.get(r.cache_key) if self.cache.max_bytes else None for r in requests]
        if self.metrics is not None and self.cache.max_bytes:
            hits = sum(c is not None for c in cached)
            self.metrics.cache_hits.inc(hits)
            self.metrics.cache_misses.inc(len(cached) - hits)
        missing = [i for i, c in enumerate(cached) if c is None]
        backbone_ms = 0.0
        if missing:
            # uint8 travels to the device (4x fewer bytes than float) and is normalised there, batched
            images = self.normalize(torch.stack([requests[i].pixels for i in missing]).to(self.device))
            images = images.to(self.dtype)
            start = time.perf_counter()
            feats = self.backbone.forward_features(images)
            if images.device.type == "cuda":
                torch.cuda.synchronize(images.device)
            backbone_ms = (time.perf_counter() - start) * 1000
            if self.metrics is not None:
                self.metrics.backbone_seconds.observe(backbone_ms / 1000)
                self.metrics.batch_size.observe(len(missing))
            if len(missing) == len(requests):
                if self.cache.max_bytes:
                    for j, i in enumerate(missing):
                        self.cache.put(requests[i].cache_key, [f[j].clone() for f in feats])
                return feats, backbone_ms, len(missing)
            for j, i in enumerate(missing):
                cached[i] = [f[j].clone() for f in feats]
                self.cache.put(requests[i].cache_key, cached[i])
        if self.metrics is not None:
            self.metrics.cache_bytes.set(self.cache.size_bytes)
        layers = len(cached[0])
        return [torch.stack([c[l] for c in cached]) for l in range(layers)], backbone_ms, len(missing)

    def run(self, jobs: Sequence[Job]) -> list[object]:
        started = time.perf_counter()
        snapshot = self.registry.snapshot  # this batch finishes on this tuner set
        classifiers = snapshot.of_kind(CLASSIFICATION.name)
        requests: list[ClassifyRequest] = [job.payload for job in jobs]
        results: list[object] = [None] * len(jobs)
        loaded = list(classifiers)
        valid: list[int] = []
        for i, r in enumerate(requests):
            # a task named in the request and deleted since the HTTP check is reported by name
            unknown = [t for t in (r.tasks or []) if t not in classifiers]
            if unknown:
                results[i] = UnknownTasksError(unknown, loaded)
                continue
            if not loaded:
                results[i] = NoTunersError("no classification tuners are loaded; upload one with POST /v1/tuners")
                continue
            valid.append(i)
        if not valid:
            return results
        batch = [requests[i] for i in valid]
        feats, backbone_ms, computed = self._features(batch)
        wanted = list(dict.fromkeys(t for r in batch for t in (r.tasks or loaded)))
        start = time.perf_counter()
        logits = snapshot.runners[CLASSIFICATION.name].run(feats, wanted)
        # One top-k per task for the whole batch, turned into Python lists once: per-request,
        # per-task tensor calls would cost more than the heads themselves on a small backbone.
        k_max = max(r.top_k for r in batch)
        want_probs = any(r.probabilities for r in batch)
        ranked = {}
        for name, v in logits.items():
            probs = torch.softmax(v.float(), dim=-1)
            scores, idx = torch.topk(probs, min(k_max, probs.shape[-1]), dim=-1)
            ranked[name] = (scores.cpu().tolist(), idx.cpu().tolist(), probs if want_probs else None)
        heads_ms = (time.perf_counter() - start) * 1000
        if self.metrics is not None:
            self.metrics.heads_seconds.observe(heads_ms / 1000)
        for j, i in enumerate(valid):
            r = batch[j]
            out = {}
            for name in r.tasks or loaded:
                tuner = classifiers[name]
                scores, idx, probs = ranked[name]
                out[name] = {
                    "labels": [tuner.labels[c] for c in idx[j][: r.top_k]],
                    "scores": [round(s, 6) for s in scores[j][: r.top_k]],
                    "tuner": tuner.ref,
                }
                if r.probabilities:
                    out[name]["probabilities"] = probs[j].cpu().tolist()
            results[i] = {
                "results": out,
                "timings_ms": {
                    "queue": round((started - jobs[i].enqueued_at) * 1000, 3),
                    "backbone": round(backbone_ms, 3),
                    "heads": round(heads_ms, 3),
                    "batch_size": len(batch),
                    "backbone_images": computed,
                },
            }
        return results
