"""Prometheus metrics of one server instance (its own registry, so tests can run several apps)."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST  # what GET /metrics answers, and what its OpenAPI entry says


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "restune_http_requests", "HTTP requests by endpoint and status", ["endpoint", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "restune_http_request_seconds", "HTTP request latency by endpoint", ["endpoint", "method"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram("restune_batch_size", "images per backbone forward", buckets=BATCH_BUCKETS, registry=r)
        self.backbone_seconds = Histogram(
            "restune_backbone_seconds", "backbone forward time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.heads_seconds = Histogram(
            "restune_heads_seconds", "multi-task heads time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("restune_queue_depth", "classify requests waiting for a batch", registry=r)
        self.rejected = Counter("restune_rejected_requests", "requests refused because the queue was full", registry=r)
        self.cache_hits = Counter("restune_feature_cache_hits", "feature cache hits", registry=r)
        self.cache_misses = Counter("restune_feature_cache_misses", "feature cache misses", registry=r)
        self.cache_bytes = Gauge("restune_feature_cache_bytes", "bytes held by the feature cache", registry=r)
        self.loaded_tuners = Gauge("restune_loaded_tuners", "tuners this replica serves (resident or loaded on their "
                                   "first request), by kind", ["kind"], registry=r)
        self.resident_tuners = Gauge("restune_resident_tuners", "tuners resident (placed for serving), by kind",
                                     ["kind"], registry=r)
        self.resident_bytes = Gauge("restune_resident_bytes", "bytes the resident tuners take", registry=r)
        self.host_cache_bytes = Gauge("restune_host_cache_bytes", "bytes of validated artifacts cached in host "
                                      "memory (tuners not resident)", registry=r)
        self.tuner_hits = Counter("restune_tuner_hits", "tuners a request named that were resident", registry=r)
        self.tuner_misses = Counter("restune_tuner_misses", "tuners a request named that had to be loaded",
                                    registry=r)
        self.tuner_load_seconds = Histogram("restune_tuner_load_seconds", "time to make one tuner resident",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.tuner_evictions = Counter("restune_tuner_evictions", "resident tuners evicted to make room",
                                       registry=r)
        # One series at a time, like vLLM's lora_requests_info that the Kubernetes gateway inference extension
        # reads: the tuners requests hold now and the ones being loaded, as comma-separated label values.
        self.tuner_requests_info = Gauge(
            "restune_tuner_requests_info", "tuners held by requests in flight and tuners being loaded (value: "
            "unix time of the update)", ["running_tuners", "waiting_tuners", "max_resident_mb"], registry=r)
        self.hotload_seconds = Histogram(
            "restune_hotload_seconds", "time to load a changed tuner and swap it in", buckets=LATENCY_BUCKETS, registry=r
        )
        self.hotload_failures = Counter(
            "restune_hotload_failures", "store changes that could not be loaded (previous version kept)", registry=r
        )
        self.store_revision = Gauge("restune_store_revision", "last store revision applied", registry=r)

    def set_tuner_requests(self, running: list[str], waiting: list[str], max_resident_mb: str) -> None:
        self.tuner_requests_info.clear()  # one series: the label values change, old ones must not linger
        self.tuner_requests_info.labels(",".join(running), ",".join(waiting), max_resident_mb).set(time.time())

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), METRICS_CONTENT_TYPE
