"""HTTP request and response models (pydantic lives at this edge only)."""
from __future__ import annotations

import dataclasses
import typing

from pydantic import BaseModel, ConfigDict, Field, create_model

from tuner_store.records import TunerRecord

MAX_TOP_K = 1000
MAX_TASKS_PER_REQUEST = 256


class ClassifyOptions(BaseModel):
    """What a classify request may ask for besides the image: the same rules for JSON and multipart bodies."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] | None = Field(
        None, description="task names; default every loaded classification tuner", max_length=MAX_TASKS_PER_REQUEST
    )
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="labels per task (default: server setting)")


class ClassifyJSONRequest(ClassifyOptions):
    image: str = Field(..., description="the image file (PNG, JPEG, …) as base64", min_length=1)


class TaskResult(BaseModel):
    labels: list[str]
    scores: list[float]
    tuner: str = Field(..., description="name@version that answered")


class ClassifyResponse(BaseModel):
    results: dict[str, TaskResult]
    timings_ms: dict[str, float]


class ErrorResponse(BaseModel):
    error: str


def _record_fields() -> dict:
    """The tuner record's own fields (tuner_store.records.TunerRecord), so the HTTP schema never restates them."""
    hints = typing.get_type_hints(TunerRecord)
    return {f.name: (hints[f.name], ...) for f in dataclasses.fields(TunerRecord)}


TunerSummary = create_model(
    "TunerSummary",
    **_record_fields(),
    ref=(str, Field(..., description="name@version")),
    serving=(bool, Field(..., description="whether this version is the one this server answers with")),
    serving_version=(int | None, Field(None, description="the version this server answers with, if any")),
    resident=(bool, Field(False, description="placed for serving now (not loaded on its next request)")),
    pinned=(bool, Field(False, description="never evicted on this replica")),
    problem=(str | None, Field(None, description="why the newest version is not serving here, if it is not")),
)


class TunerList(BaseModel):
    tuners: list[TunerSummary]
    store_revision: int
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last page")


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
    steps: int | None = Field(None, description="denoising steps (default: the model's: 50 for Stable Diffusion, 25 for tiny-trained)")
    guidance_scale: float | None = Field(None, description="classifier-free guidance (default: the model's: 3.0 for Stable Diffusion, 1.5 for "
                                                                  "tiny-trained)")
    seed: int | None = Field(None, ge=0, description="prompt i uses seed + i for every style (default: random)")
    height: int | None = Field(None, description="pixels, a multiple of the model's size step")
    width: int | None = Field(None, description="pixels, a multiple of the model's size step")
    sampler: str | None = Field(None, description="pndm (PLMS) or ddim (default: the model's: pndm for Stable Diffusion, "
                                                           "ddim for tiny-trained)")


class GeneratedImageOut(BaseModel):
    prompt: str
    style: str
    seed: int
    png_base64: str


class GenerateResponse(BaseModel):
    images: list[GeneratedImageOut]
    timings_ms: dict[str, float]
