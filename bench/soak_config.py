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
    images: int = 256
    image_size: int = 224
    max_in_flight: int = 64
    sample_interval: float = 1.0
    rss_tolerance_mb: float = 32.0
    store: str | None = None  # None: a fresh file store in a temporary directory
    server_args: list[str] = field(default_factory=list)
    seed: int = 0
