"""The settings of `restune bench tuners`: a light module, because its --help shows their defaults."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TunersConfig:
    backbone: str = "vit_tiny_patch16_224"
    device: str = "cpu"  # the servers' --device (the benchmark's own engine timing runs there too)
    counts: tuple[int, ...] = (5, 100, 1000, 2000)
    poolings: tuple[str, ...] = ("token", "avg")
    mixes: tuple[tuple[int, str], ...] = ((3, "zipf"), (1, "uniform"), (3, "uniform"))  # (k tasks, popularity)
    partial_budget: float = 0.1  # the share of tuners the small resident budget holds (largest N only)
    concurrency: int = 8
    window_s: float = 12.0
    rounds: int = 2
    images: int = 64
    image_size: int = 224
    distinct_weights: int = 32  # tuners share these weight sets (their slots are still their own)
    puts: int = 10
    cold_probes: int = 24  # cold misses timed per N (all resident; each paired with a hit sent at the same moment)
    store: str = "file"  # or a redis:// URL (a scratch database: it is flushed)
    seed: int = 0
    engine_tuners: int = 100
    engine_repeats: int = 9
    max_batch_size: int = 8
    extra_server_args: list[str] = field(default_factory=list)
