"""The Open Inference Protocol (KServe v2) REST messages, as pydantic models at the HTTP edge.

They validate the JSON part of a request (in the binary tensor data extension, the JSON header before the raw
tensors) and describe both directions in the OpenAPI document. Field names are the protocol's.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# A parameter value is a string, a number or a boolean; never an object, a list or null.
ParameterValue = bool | int | float | str
Parameters = dict[str, ParameterValue]
Dimension = Annotated[int, Field(ge=0, le=2**31 - 1)]
MAX_TENSORS = 1024  # inputs or requested outputs per request


# Requests are validated strictly: the protocol's JSON types exactly, nothing converted ("1" is not 1, 0 is not
# false), and no field the protocol does not have.
STRICT = ConfigDict(extra="forbid", strict=True)


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its $defs written in place, to embed in an OpenAPI requestBody (where a
    `#/$defs/…` reference would point at the OpenAPI document's root)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


class InferInput(BaseModel):
    model_config = STRICT

    name: str = Field(..., min_length=1, max_length=256)
    shape: list[Dimension] = Field(..., max_length=8)
    datatype: str = Field(..., min_length=1, max_length=16, description="BYTES or UINT8 here")
    parameters: Parameters | None = Field(
        None, description="binary_data_size: its bytes follow the JSON header (binary tensor data extension)")
    data: list[Any] | None = Field(None, description="row-major, flat or nested; absent when sent as binary")


class RequestedOutput(BaseModel):
    model_config = STRICT

    name: str = Field(..., min_length=1, max_length=256)
    parameters: Parameters | None = Field(
        None, description="binary_data: true sends it as raw bytes; classification: K answers the top K as "
                          "'score:index:label' strings")


class InferenceRequest(BaseModel):
    model_config = STRICT

    id: str | None = Field(None, max_length=256)
    parameters: Parameters | None = Field(
        None, description="top_k (labels per image), tasks (comma list; multi-task model), binary_data_output")
    inputs: list[InferInput] = Field(..., min_length=1, max_length=MAX_TENSORS)
    outputs: list[RequestedOutput] | None = Field(None, max_length=MAX_TENSORS)


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[OutputTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(..., description="-1: any size")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class RepositoryIndexRequest(BaseModel):
    model_config = STRICT

    ready: bool | None = Field(None, description="true: only the models ready on this replica")


class RepositoryModel(BaseModel):
    name: str
    version: str | None = None
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = ""


class RepositoryRequest(BaseModel):
    """The body of load and unload; restune takes no parameters there (models come from the tuner store)."""

    model_config = STRICT

    parameters: Parameters | None = None


class RepositoryAnswer(BaseModel):
    name: str
    version: str | None = None
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = ""
