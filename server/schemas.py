"""HTTP request and response models (pydantic lives at this edge only)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_K = 1000
MAX_TASKS_PER_REQUEST = 256


class ClassifyJSONRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(..., description="the image file (PNG, JPEG, …) as base64", min_length=1)
    tasks: list[str] | None = Field(
        None, description="task names; default every loaded classification tuner", max_length=MAX_TASKS_PER_REQUEST
    )
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="labels per task (default: server setting)")


class TaskResult(BaseModel):
    labels: list[str]
    scores: list[float]
    tuner: str = Field(..., description="name@version that answered")


class ClassifyResponse(BaseModel):
    results: dict[str, TaskResult]
    timings_ms: dict[str, float]


class ErrorResponse(BaseModel):
    error: str


class TunerSummary(BaseModel):
    name: str
    version: int
    ref: str
    kind: str
    sha256: str = Field(..., description="sha256 of the artifact's weights")
    num_labels: int
    backbone_name: str
    backbone_fingerprint: str
    created_at: str
    size_bytes: int
    serving: bool
    serving_version: int | None = None
    metrics: dict = Field(default_factory=dict)
    problem: str | None = Field(None, description="why the newest version is not serving here, if it is not")


class TunerList(BaseModel):
    tuners: list[TunerSummary]
    store_revision: int


class TunerDetail(TunerSummary):
    labels: list[str] = Field(default_factory=list)
    versions: list[int] = Field(default_factory=list)
    tuner: dict = Field(default_factory=dict)


class PutResponse(BaseModel):
    name: str
    version: int
    ref: str
    created: bool


class DeleteResponse(BaseModel):
    name: str
    deleted_versions: list[int]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: list[str] = Field(..., min_length=1, description="text prompts")
    styles: list[str] = Field(default_factory=lambda: ["base"], min_length=1,
                              description="style tuner names; 'base' is the plain U-Net")
    steps: int | None = Field(None, description="denoising steps (default 50)")
    guidance_scale: float | None = Field(None, description="classifier-free guidance (default 3.0)")
    seed: int | None = Field(None, ge=0, description="prompt i uses seed + i for every style (default: random)")
    height: int | None = Field(None, description="pixels, a multiple of the model's size step")
    width: int | None = Field(None, description="pixels, a multiple of the model's size step")
    sampler: str | None = Field(None, description="pndm (PLMS, default) or ddim")


class GeneratedImageOut(BaseModel):
    prompt: str
    style: str
    seed: int
    png_base64: str


class GenerateResponse(BaseModel):
    images: list[GeneratedImageOut]
    timings_ms: dict[str, float]
