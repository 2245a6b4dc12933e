"""Server settings: flags or the same names as RESTUNE_* environment variables."""
from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerSettings(BaseSettings):
    """Every knob of `restune serve`; env vars are RESTUNE_<NAME> (e.g. RESTUNE_MAX_BATCH_SIZE)."""

    model_config = SettingsConfigDict(env_prefix="RESTUNE_", extra="ignore")

    backbone: str = "vit_tiny_patch16_224"
    weights: str = Field("auto", description="pretrained | random | random:SEED | auto | path.safetensors")
    store: str = Field("file://./data/tuners", description="file:///path or redis://host:port/db")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: str = Field("auto", description="auto (CUDA when present) | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_queue_delay_ms: float = Field(5.0, ge=0, le=10_000)
    max_queue_size: int = Field(256, ge=1)
    feature_cache_mb: float = Field(256.0, ge=0)
    admin_token: str | None = None
    max_upload_mb: float = Field(64.0, gt=0, description="limit of one tuner artifact upload")
    max_image_mb: float = Field(20.0, gt=0, description="limit of one image (encoded bytes)")
    max_image_pixels: int = Field(40_000_000, gt=0)
    default_top_k: int = Field(5, ge=1)
    diffusion_model: str | None = Field(None, description="a diffusers directory, tiny-random, or unset")
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off unless origins are listed")
    kernel_backend: Literal["auto", "torch", "triton"] = "auto"
    torch_threads: int = Field(0, ge=0, description="intra-op threads of the model thread; 0: torch's default (the cores)")
    demo_if_empty: bool = Field(False, description="train and push the 19 demo tuners when the store is empty")
    log_level: str = "info"
    # SIGTERM (what Kubernetes and `docker stop` send) drains instead of stopping at once; see server/shutdown.py
    drain_delay_s: float = Field(2.0, ge=0, le=300, description="after SIGTERM, /readyz answers 503 and new "
                                 "connections are still served this long, so load balancers move away first")
    drain_timeout_s: float = Field(20.0, gt=0, le=3600, description="then, at most this long for the requests "
                                   "in flight and queued to finish")

    @field_validator("admin_token")
    @classmethod
    def _empty_token_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _refuse_open_writes(self) -> "ServerSettings":
        if not is_loopback(self.host) and not self.admin_token:
            raise ValueError(
                f"refusing to listen on non-loopback address {self.host!r} without an admin token; "
                "set --admin-token or RESTUNE_ADMIN_TOKEN"
            )
        return self

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self):
        import torch

        if self.dtype == "auto":
            return torch.float16 if self.resolved_device().startswith("cuda") else torch.float32
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.dtype]
