"""Server settings: flags or the same names as RESTUNE_* environment variables."""
from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tuner_store.store import DEFAULT_LOG_KEEP

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerSettings(BaseSettings):
    """Every knob of `restune serve`, defined once: each field is the flag --field-name (restune.options
    generates them) and the environment variable RESTUNE_<NAME> (e.g. RESTUNE_MAX_BATCH_SIZE)."""

    model_config = SettingsConfigDict(env_prefix="RESTUNE_", extra="ignore")

    backbone: str = Field("vit_tiny_patch16_224", description="timm ViT name")
    weights: str = Field("auto", description="pretrained | random | random:SEED | auto | path.safetensors")
    store: str = Field("file://./data/tuners", description="tuner store URL: file:///path or redis://host:port/db")
    host: str = Field("127.0.0.1", description="listen address; a non-loopback one needs an admin token")
    port: int = Field(8000, ge=0, le=65535, description="listen port")
    device: str = Field("auto", description="auto (CUDA when present) | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="model dtype; auto: "
                                                                     "float16 on CUDA, float32 on the CPU")
    max_batch_size: int = Field(32, ge=1, le=1024, description="images per backbone forward")
    max_queue_delay_ms: float = Field(5.0, ge=0, le=10_000,
                                      description="how long a request may wait for others to batch with")
    max_queue_size: int = Field(256, ge=1, description="requests waiting before new ones get 503")
    feature_cache_mb: float = Field(256.0, ge=0, description="feature cache size in MiB (0 disables it)")
    resident_mb: float = Field(1024.0, ge=0, description="byte budget of the tuners resident for serving, in MiB "
                               "(least recently used ones are evicted; 0: no limit)")
    host_cache_mb: float = Field(256.0, ge=0, description="byte budget of tuners that are not resident (validated "
                                 "artifacts, and packed heads: of tuners evicted for room, and filled in at start), in MiB (0: none)")
    pin: Annotated[list[str], NoDecode] = Field(default_factory=list, description="a tuner that is never evicted and is the default task "
                           "set once more than 64 tuners are stored (repeatable)")
    miss_timeout_s: float = Field(10.0, gt=0, le=600, description="longest a request waits for its tuners to load "
                                  "before it gets 503 with Retry-After")
    admin_token: str | None = Field(None, description="bearer token required for tuner writes")
    max_upload_mb: float = Field(64.0, gt=0, description="limit of one tuner artifact upload, in MiB")
    max_image_mb: float = Field(20.0, gt=0, description="limit of one image (encoded bytes), in MiB")
    max_image_pixels: int = Field(40_000_000, gt=0, description="limit of one decoded image, in pixels")
    default_top_k: int = Field(5, ge=1, description="labels per task when a request does not say")
    diffusion_model: str | None = Field(None, description="a diffusers directory, tiny-trained or tiny-random; "
                                                          "enables POST /v1/generate")
    cors_origins: list[str] = Field(default_factory=list, json_schema_extra={"flag": "--cors-origin"},
                                    description="allow CORS from this origin (repeatable; CORS is off by default)")
    kernel_backend: Literal["auto", "torch", "triton"] = Field("auto", description="engine kernels: auto (Triton "
                                                                                   "on CUDA), torch or triton")
    torch_threads: int = Field(0, ge=0, description="intra-op threads of the model thread; 0: torch's default "
                                                    "(the cores)")
    demo_if_empty: bool = Field(False, description="when the store holds no tuners, train and push the 19 demo "
                                                   "tuners first")
    store_timeout_s: float = Field(5.0, gt=0, le=300, description="longest a store call may take: a Redis that "
                                   "hangs makes uploads, deletes and tuner reads answer 503 after this long")
    change_log_keep: int = Field(DEFAULT_LOG_KEEP, ge=1, description="revisions the store's change log keeps when "
                                 "this server writes (a replica further behind reads the whole catalog again)")
    max_concurrent_uploads: int = Field(2, ge=1, description="tuner uploads read and validated at once; more get "
                                        "503 with Retry-After (each may hold a few times --max-upload-mb)")
    body_timeout_s: float = Field(60.0, gt=0, description="a request body must arrive within this many seconds "
                                  "in all (else 408)")
    body_idle_s: float = Field(10.0, gt=0, description="and with no pause longer than this (else 408)")
    request_timeout_s: float = Field(300.0, gt=0, description="a request not answered within this many seconds "
                                     "gets 503")
    log_level: str = Field("info", description="uvicorn log level")
    malloc_trim_interval_s: float = Field(60.0, ge=0, description="every this many seconds, give the memory the C "
                                          "allocator keeps after frees back to the OS (glibc malloc_trim; 0: never)")
    # SIGTERM (what Kubernetes and `docker stop` send) drains instead of stopping at once; see server/shutdown.py
    drain_delay_s: float = Field(2.0, ge=0, le=300, description="after SIGTERM, /readyz answers 503 and new "
                                 "connections are still served this long, so load balancers move away first")
    drain_timeout_s: float = Field(20.0, gt=0, le=3600, description="then, at most this long for the requests "
                                   "in flight and queued to finish")

    @field_validator("pin", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        # RESTUNE_PIN=a,b as well as JSON lists and repeated flags
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

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
        from restuning.devices import resolve_device  # torch: the command line parses settings without it

        return str(resolve_device(self.device))

    def resolved_dtype(self):
        from restuning.devices import resolve_dtype  # torch (see above)

        return resolve_dtype(self.dtype, self.resolved_device())
