"""The soak's settings: a light module, because `restune bench soak --help` shows their defaults."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SoakConfig:
    backbone: str = "vit_tiny_patch16_224"
    weights: str = "random:0"
    duration: float = 600.0
    warmup: float = 30.0
    rate: float = 20.0  # operations per second, all kinds together
    write_fraction: float = 0.1  # share of operations that are uploads or deletes
    tasks: int = 8  # stable tuners, never deleted
    churn: int = 3  # tuners uploaded and deleted in turn
    fresh_names: bool = False  # each churn upload after a delete takes a name never used before
    images: int = 256
    image_size: int = 224
    max_in_flight: int = 64
    sample_interval: float = 1.0
    rss_growth_mb: float = 16.0  # RSS growth allowed over the measured run, from the fitted slope
    rss_cap_mb: float = 64.0  # the measured run's peak RSS may exceed its start by at most this
    latency_ratio: float = 1.2  # classify p99 of the last window / of the first window, at most
    latency_window: float = 600.0  # seconds per window (a third of the run when that is shorter)
    store: str | None = None  # None: a fresh file store in a temporary directory
    server_args: list[str] = field(default_factory=list)
    server_wrapper: str | None = None  # e.g. "python -m bench.memprobe --out F": runs `-m restune serve …` under it
    seed: int = 0
