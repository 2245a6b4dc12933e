"""The classify path after the batcher: features (cache or one backbone pass), then each request's own heads."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import torch

from restuning.backbones.base import Backbone
from restuning.engine import MultiTaskEngine
from restuning.errors import InputError
from server.batcher import Job
from server.feature_cache import FeatureCache


class UnknownTasksError(LookupError):
    def __init__(self, unknown: list[str], loaded: list[str]):
        self.unknown = unknown
        self.loaded = loaded
        super().__init__(f"unknown tasks {unknown}; loaded: {loaded}")


@dataclass
class ClassifyRequest:
    pixels: torch.Tensor  # [3, H, W] uint8, resized; normalised per batch by the runner
    cache_key: str
    tasks: list[str]  # this request's tasks (the HTTP layer resolves the default set and makes them resident)
    top_k: int
    probabilities: bool = False  # also return every class's probability (the Open Inference Protocol asks)
    named: bool = True  # False: the server's default set; a tuner deleted meanwhile is left out, not an error
    # set while some of `tasks` are being made resident: the batch's backbone pass runs meanwhile and the heads
    # wait for it (done: None, or the error to answer with); None: every task was resident when it was queued
    residency: Future | None = None
    resident_wait_ms: float = 0.0  # how long the model thread waited for it after the backbone pass


class Deferred:
    """A request whose tuners were still loading when its batch's heads were due: the HTTP layer queues it again
    once they are resident (its features are in the feature cache by then, when there is one)."""


DEFERRED = Deferred()
# How long the model thread waits, after the backbone pass, for a request's tuners still loading before it
# defers that request rather than hold up the whole batch (a load from the host cache takes a few ms).
RESIDENCY_GRACE_S = 0.025


class ClassifyRunner:
    """One backbone pass per batch (or the feature cache), then each request's own heads (per-request routing)."""

    def __init__(self, backbone: Backbone, engine: MultiTaskEngine, cache: FeatureCache, *, device, dtype,
                 normalize: Callable[[torch.Tensor], torch.Tensor], metrics=None):
        self.backbone = backbone
        self.engine = engine
        self.normalize = normalize  # uint8 [B, 3, H, W] -> float [B, 3, H, W], on the tensor's device
        self.cache = cache
        self.device = device
        self.dtype = dtype
        self.metrics = metrics

    def _features(self, requests: Sequence[ClassifyRequest]) -> tuple[list[torch.Tensor], float, int]:
        """[x_0 … x_L] for the batch, each [B, N, D]; backbone ms; number of images that ran the backbone.

        Cached features are views into the cache's slab: they are copied into the batch before anything is put.
        """
        use_cache = bool(self.cache.max_bytes)
        cached = [self.cache.get(r.cache_key) if use_cache else None for r in requests]
        hits = [i for i, c in enumerate(cached) if c is not None]
        missing = [i for i, c in enumerate(cached) if c is None]
        if self.metrics is not None and use_cache:
            self.metrics.cache_hits.inc(len(hits))
            self.metrics.cache_misses.inc(len(missing))
        backbone_ms = 0.0
        feats: list[torch.Tensor] = []
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
        if not hits:
            out = feats
        else:
            first = cached[hits[0]]
            out = [torch.empty((len(requests), *t.shape), dtype=t.dtype, device=t.device) for t in first]
            for layer, batch in enumerate(out):
                batch[hits] = torch.stack([cached[i][layer] for i in hits])
                if missing:
                    batch[missing] = feats[layer]
        if use_cache:  # after every cached view was copied: a put may reuse the slot a view points into
            for j, i in enumerate(missing):
                self.cache.put(requests[i].cache_key, [f[j] for f in feats])
            if self.metrics is not None:
                self.metrics.cache_bytes.set(self.cache.size_bytes)
        return out, backbone_ms, len(missing)

    def _gone(self, r: ClassifyRequest) -> UnknownTasksError | None:
        """Tasks deleted since the HTTP layer checked them: the default set simply leaves them out (None unless it
        is left empty); a task the request named is named back."""
        unknown = [t for t in r.tasks if t not in self.engine]
        if unknown and not r.named:
            r.tasks = [t for t in r.tasks if t in self.engine]
            unknown = [] if r.tasks else unknown
        return UnknownTasksError(unknown, sorted(self.engine.names)) if unknown else None

    def _await_residency(self, batch: list[ClassifyRequest], waiting: list[int], results: list[object],
                         valid: list[int]) -> list[int]:
        """Wait (briefly) for the requests whose tuners were loading during the backbone pass; settle those that
        failed or are still loading in `results`. Returns the positions in `batch` that go on to the heads."""
        grace_ends = time.perf_counter() + RESIDENCY_GRACE_S
        dropped = set()
        for j in waiting:
            r = batch[j]
            began = time.perf_counter()
            try:
                error = r.residency.result(timeout=max(0.0, grace_ends - began))
            except FutureTimeout:
                error = DEFERRED
            r.resident_wait_ms += (time.perf_counter() - began) * 1000
            if error is None:
                error = self._gone(r)
            if error is not None:
                results[valid[j]] = error
                dropped.add(j)
        return [j for j in range(len(batch)) if j not in dropped]

    def run(self, jobs: Sequence[Job]) -> list[object]:
        started = time.perf_counter()
        requests: list[ClassifyRequest] = [job.payload for job in jobs]
        results: list[object] = [None] * len(jobs)
        valid: list[int] = []
        for i, r in enumerate(requests):
            if r.residency is not None:  # checked once resident, after the backbone pass
                valid.append(i)
                continue
            gone = self._gone(r)
            if gone is not None:
                results[i] = gone
            else:
                valid.append(i)
        if not valid:
            return results
        batch = [requests[i] for i in valid]
        feats, backbone_ms, computed = self._features(batch)
        waiting = [j for j, r in enumerate(batch) if r.residency is not None]
        if waiting:
            keep = self._await_residency(batch, waiting, results, valid)
            if len(keep) < len(batch):
                if not keep:
                    return results
                rows = torch.tensor(keep, device=feats[0].device)
                feats = [f.index_select(0, rows) for f in feats]
                valid = [valid[j] for j in keep]
                batch = [batch[j] for j in keep]
        start = time.perf_counter()
        try:
            routed = self.engine.run_routed(feats, [r.tasks for r in batch], tags=True)
        except InputError:  # deleted during the backbone pass (after the check above): answer per request
            routed = []
            for j, r in enumerate(batch):
                if not r.named:  # the default set leaves out what is gone, now as before the pass
                    r.tasks = [t for t in r.tasks if t in self.engine]
                try:
                    routed.append(self.engine.run_routed([f[j:j + 1] for f in feats], [r.tasks], tags=True)[0]
                                  if r.tasks else None)
                except InputError:
                    routed.append(None)
        answers = []
        for r, logits in zip(batch, routed):
            if logits is None:
                answers.append(None)
                continue
            out = {}
            for name, (values, tuner) in logits.items():
                probs = torch.softmax(values.float(), dim=-1)
                scores, idx = torch.topk(probs, min(r.top_k, probs.shape[-1]))
                out[name] = {"labels": [tuner.labels[c] for c in idx.tolist()],
                             "scores": [round(v, 6) for v in scores.tolist()], "tuner": tuner.ref}
                if r.probabilities:
                    out[name]["probabilities"] = probs.tolist()
            answers.append(out)
        heads_ms = (time.perf_counter() - start) * 1000
        if self.metrics is not None:
            self.metrics.heads_seconds.observe(heads_ms / 1000)
        for j, i in enumerate(valid):
            if answers[j] is None:
                gone = [t for t in batch[j].tasks if t not in self.engine]
                results[i] = UnknownTasksError(gone, sorted(self.engine.names))
                continue
            results[i] = {
                "results": answers[j],
                "timings_ms": {
                    "queue": round((started - jobs[i].enqueued_at) * 1000, 3),
                    "backbone": round(backbone_ms, 3),
                    "heads": round(heads_ms, 3),
                    "batch_size": len(batch),
                    "backbone_images": computed,
                    "tuner_wait": round(batch[j].resident_wait_ms, 3),
                },
            }
        return results
