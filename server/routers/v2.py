"""The Open Inference Protocol (KServe v2) over REST, beside /v1: health, metadata and inference.

Each classification tuner is a model: its name is the tuner's name, its one version the version this replica
serves (the store's newest). `_all` is the multi-task model: every classification tuner, or those a request names,
in one backbone pass; tuner names start with a letter or a digit, so no tuner can take its name.

A model takes one of two inputs:
- IMAGE, BYTES [B]: each element an encoded image file (PNG, JPEG, …); in JSON `data`, base64 text;
- PIXELS, UINT8 [B, H, W, 3]: RGB pixels, resized here like a decoded file.
A tuner's outputs are PROBABILITIES, FP32 [B, C] (every class, in label order) and LABELS, BYTES [B, K] (the top
K labels; K is the request parameter top_k). The multi-task model answers, by default, one output per task, named
after the task: its FP32 [B, C_task] probabilities; TASK/LABELS is there on request. Every output also takes the
classification extension (`classification: K` answers 'score:index:label' strings).

Each of the B images is one job of the same batcher /v1/classify feeds (server.runner), so images from /v1 and
/v2 requests share backbone passes. Binary tensors: server.v2_codec. The model repository: routers/v2_repository.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from server.feature_cache import content_key
from server.http import media_type, read_body, unsupported
from server.http_errors import ERRORS, APIError, validation_details
from server.kinds import SERVED_KINDS
from server.routers.classify import ClassifyAPI, default_tasks, split_tasks
from server.runner import ClassifyRequest
from server.schemas import MAX_TASKS_PER_REQUEST, MAX_TOP_K
from server.state import ServerState
from server.v2_codec import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    TensorError,
    binary_parts,
    bytes_tensor,
    encode_response,
    numeric_tensor,
    output_tensor,
    split_body,
)
from server.v2_schemas import (
    InferenceRequest,
    InferenceResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    inline_schema,
)
from tuner_store.kinds import CLASSIFICATION

MULTITASK_MODEL = "_all"
PLATFORM = "restune"
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository"]
IMAGE, PIXELS = "IMAGE", "PIXELS"
PROBABILITIES, LABELS = "PROBABILITIES", "LABELS"
INPUTS = [{"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
          {"name": PIXELS, "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]

INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(InferenceRequest)},
            BINARY_CONTENT_TYPE: {"schema": {
                "type": "string", "format": "binary",
                "description": f"binary tensor data extension: the JSON request ({HEADER_LENGTH} bytes), then the "
                               "raw bytes of each input that gives binary_data_size"}},
        },
    }
}
INFER_ANSWER = {**ERRORS, 200: {
    "model": InferenceResponse,
    "description": "the outputs; with binary outputs, the JSON then their bytes (application/octet-stream)",
    "headers": {HEADER_LENGTH: {"schema": {"type": "integer"},
                                "description": "with binary outputs: the length of the JSON part"}},
    "content": {BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
}}


@dataclass
class Model:
    """What a model name stands for on this replica right now."""

    name: str
    tasks: list[str]  # the classification tuners it runs, in output order
    refs: dict[str, str]  # task -> name@version serving it
    classes: dict[str, int]  # task -> number of classes
    version: str | None  # a tuner's served version; None for the multi-task model

    @property
    def multitask(self) -> bool:
        return self.name == MULTITASK_MODEL

    def outputs(self) -> dict[str, tuple[str, str, str]]:
        """output name -> (task, what: "probabilities" | "labels", datatype)."""
        if not self.multitask:
            task = self.tasks[0]
            return {PROBABILITIES: (task, "probabilities", "FP32"), LABELS: (task, "labels", "BYTES")}
        out = {}
        for task in self.tasks:
            out[task] = (task, "probabilities", "FP32")
            out[f"{task}/{LABELS}"] = (task, "labels", "BYTES")
        return out

    def metadata(self) -> dict:
        outputs = [{"name": name, "datatype": datatype,
                    "shape": [-1, self.classes[task]] if what == "probabilities" else [-1, -1]}
                   for name, (task, what, datatype) in self.outputs().items()]
        return {"name": self.name, "versions": [self.version] if self.version else [], "platform": PLATFORM,
                "inputs": INPUTS, "outputs": outputs}


def _param(params: dict, key: str, kind: type, default=None):
    value = params.get(key, default)
    if value is default:
        return value
    # bool is an int in Python; a parameter declared as a number must not take true/false, and vice versa
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise APIError(400, f"parameter {key!r} must be an integer")
    if kind is bool and not isinstance(value, bool):
        raise APIError(400, f"parameter {key!r} must be true or false")
    if kind is str and not isinstance(value, str):
        raise APIError(400, f"parameter {key!r} must be a string")
    return value


class V2API:
    def __init__(self, state: ServerState):
        self.state = state
        self.classify = ClassifyAPI.of(state)  # /v1's decoding, limits and batcher answers, shared
        # A batch of images shares one request body, which gets the same limit as a /v1 classify body.
        self.body_limit = self.classify.body_limit
        self.max_batch = state.settings.max_queue_size  # more images than the queue holds could never all wait

    # -- models ----------------------------------------------------------------------------------------------

    async def model(self, name: str, version: str | None = None) -> Model:
        """The model `name` as served here, or the 4xx that says why it cannot answer."""
        registry = self.state.registry
        classifiers = registry.records(CLASSIFICATION.name)
        if name == MULTITASK_MODEL:
            if version is not None:
                raise APIError(404, f"the multi-task model {MULTITASK_MODEL!r} has no versions")
            if not classifiers:
                raise APIError(400, f"{MULTITASK_MODEL!r} is not ready: no classification tuners are loaded")
            try:  # without a 'tasks' parameter it runs /v1's default set
                records = [classifiers[n] for n in default_tasks(registry)]
            except APIError:  # too many tuners and none pinned: every request must name its tasks
                records = []
        else:
            record = classifiers.get(name)
            if record is None or not registry.serves(name)[0]:
                await self.not_ready(name)
            if version is not None and version != str(record.version):
                raise APIError(404, f"version {version} of {name!r} is not served here; this replica serves "
                                    f"version {record.version} (the store's newest)")
            records = [record]
        return Model(name=name, tasks=[r.name for r in records], refs={r.name: r.ref for r in records},
                     classes={r.name: r.num_labels for r in records},
                     version=None if name == MULTITASK_MODEL else str(records[0].version))

    async def not_ready(self, name: str):
        """Raise the answer for a name that is not a classification tuner served here: 404 when nothing by that
        name exists, 400 with the reason when it exists but cannot answer here."""
        registry = self.state.registry
        known = registry.record(name)
        if known is not None and known.kind != CLASSIFICATION.name:
            where = SERVED_KINDS[known.kind].endpoint
            raise APIError(400, f"{name!r} is a {known.kind} tuner, not a model of this protocol; use {where}")
        status, reason = registry.state_of(name)
        if known is not None or name in registry.unloaded:
            raise APIError(400, f"model {name!r} is not ready on this replica: {reason}", state=status, reason=reason)
        raise APIError(404, f"no model named {name!r}", available=[MULTITASK_MODEL, *sorted(
            registry.records(CLASSIFICATION.name))][:100])

    # -- inference -------------------------------------------------------------------------------------------

    async def infer(self, name: str, version: str | None, request: Request) -> Response:
        model = await self.model(name, version)
        kind = media_type(request)
        if kind not in ("", "application/json", BINARY_CONTENT_TYPE):
            raise unsupported(kind, f"application/json, or {BINARY_CONTENT_TYPE} with {HEADER_LENGTH}")
        if request.headers.get("content-encoding", "identity").strip().lower() != "identity":
            raise APIError(415, "compressed request bodies are not accepted; send the body uncompressed")
        body = await read_body(request, self.body_limit, "the request body")
        try:
            header, tail = split_body(body, request.headers.get(HEADER_LENGTH))
            payload = InferenceRequest.model_validate_json(header)
        except TensorError as exc:
            raise APIError(400, str(exc)) from None
        except ValidationError as exc:
            raise APIError(422, "invalid inference request", details=validation_details(exc)) from None
        params = payload.parameters or {}
        top_k = _param(params, "top_k", int, None)
        top_k = self.state.settings.default_top_k if top_k is None else top_k
        if not 1 <= top_k <= MAX_TOP_K:
            raise APIError(400, f"parameter 'top_k' must lie in [1, {MAX_TOP_K}]")
        binary_default = _param(params, "binary_data_output", bool, False)
        tasks_param = _param(params, "tasks", str, None)
        requested = self.requested_outputs(model, payload, tasks_param, binary_default)
        tasks = list(dict.fromkeys(task for _, (task, _, _), _, _ in requested))
        if not model.multitask and tasks_param is not None:
            raise APIError(400, f"parameter 'tasks' is for the multi-task model {MULTITASK_MODEL!r}")
        tasks = self.classify.tasks_for(tasks)
        images = await self.images(payload, tail)
        need_probs = any(what == "probabilities" for _, (_, what, _), _, _ in requested)
        jobs = [ClassifyRequest(pixels=pixels, cache_key=key, tasks=tasks, top_k=top_k, probabilities=need_probs)
                for pixels, key in images]
        results = await asyncio.gather(*(self.classify.submit(job) for job in jobs))
        return self.answer(model, payload, requested, results)

    def requested_outputs(self, model: Model, payload: InferenceRequest, tasks_param: str | None,
                          binary_default: bool) -> list[tuple[str, tuple[str, str, str], bool, int | None]]:
        """(output name, (task, what, datatype), binary?, classification K or None) for each output to answer."""
        available = model.outputs()
        wanted_tasks = split_tasks([tasks_param]) if tasks_param is not None else None
        if wanted_tasks is not None:
            if len(wanted_tasks) > MAX_TASKS_PER_REQUEST:
                raise APIError(400, f"{len(wanted_tasks)} tasks; at most {MAX_TASKS_PER_REQUEST} per request")
            self.classify.tasks_for(wanted_tasks)
        if payload.outputs is None:
            if model.multitask:
                names = wanted_tasks or model.tasks
            else:
                names = [PROBABILITIES, LABELS]
            return [(n, available[n], binary_default, None) for n in names]
        out, seen = [], set()
        for requested in payload.outputs:
            spec = available.get(requested.name)
            if spec is None:
                raise APIError(400, f"model {model.name!r} has no output {requested.name!r}",
                               available=list(available)[:200])
            if requested.name in seen:
                raise APIError(400, f"output {requested.name!r} is requested twice")
            seen.add(requested.name)
            if wanted_tasks is not None and spec[0] not in wanted_tasks:
                raise APIError(400, f"output {requested.name!r} is not one of the tasks named in 'tasks'")
            params = requested.parameters or {}
            binary = _param(params, "binary_data", bool, binary_default)
            k = _param(params, "classification", int, None)
            if k is not None and not 1 <= k <= MAX_TOP_K:
                raise APIError(400, f"output {requested.name!r}: classification must lie in [1, {MAX_TOP_K}]")
            out.append((requested.name, spec, binary, k))
        return out

    async def images(self, payload: InferenceRequest, tail: memoryview) -> list[tuple[object, str]]:
        """(uint8 pixels [3, H, W], feature-cache key) of each image the request holds."""
        try:
            parts = binary_parts([t.model_dump() for t in payload.inputs], tail)
        except TensorError as exc:
            raise APIError(400, str(exc)) from None
        names = [t.name for t in payload.inputs]
        unknown = [n for n in names if n not in (IMAGE, PIXELS)]
        if unknown or len(names) != 1:
            raise APIError(400, f"send exactly one input: {IMAGE} (BYTES [B], encoded image files) or {PIXELS} "
                                f"(UINT8 [B, H, W, 3]); got {', '.join(names)}")
        tensor, raw = payload.inputs[0].model_dump(), parts[0]
        shape = tensor["shape"]
        batch = shape[0] if shape else 0
        if not 1 <= batch:
            raise APIError(400, f"input {tensor['name']}: the batch (first dimension) must be at least 1")
        if batch > self.max_batch:
            raise APIError(413, f"a batch of {batch} images; at most {self.max_batch} per request")
        loop = asyncio.get_running_loop()
        try:
            if tensor["name"] == IMAGE:
                if tensor["datatype"] != "BYTES" or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                    raise APIError(400, f"input {IMAGE} must be BYTES [B] (or [B, 1]), got "
                                        f"{tensor['datatype']} {shape}")
                files = bytes_tensor(tensor, raw)
                decoded = [self.from_base64(i, f) if isinstance(f, str) else f for i, f in enumerate(files)]
                return await asyncio.gather(*(self.one_image(i, data) for i, data in enumerate(decoded)))
            if tensor["datatype"] != "UINT8" or len(shape) != 4 or shape[3] != 3:
                raise APIError(400, f"input {PIXELS} must be UINT8 [B, H, W, 3], got {tensor['datatype']} {shape}")
            height, width = shape[1], shape[2]
            limit = self.state.settings.max_image_pixels
            if height < 1 or width < 1:
                raise APIError(400, f"bad image: the pixels are {width}x{height}")
            if height * width > limit:
                raise APIError(400, f"bad image: image is {width}x{height} = {width * height} pixels; the limit "
                                    f"is {limit}")
            # JSON pixel data is a long Python list: checked and converted on the decode thread, not the loop
            array = numeric_tensor(tensor, raw) if raw is not None else await loop.run_in_executor(
                self.classify.decode_executor, numeric_tensor, tensor, raw)
        except TensorError as exc:
            raise APIError(400, str(exc)) from None
        return await asyncio.gather(*(self.from_array(array[i]) for i in range(batch)))

    @staticmethod
    def from_base64(index: int, text: str) -> bytes:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, f"image {index}: BYTES data in JSON is the file as base64, and this is not "
                                "valid base64") from None

    async def one_image(self, index: int, data: bytes):
        if not data:
            raise APIError(400, f"image {index} is empty")
        try:
            return await self.classify.pixels(data)
        except APIError as exc:
            exc.message = f"image {index}: {exc.message}"
            raise

    async def from_array(self, array: np.ndarray):
        state = self.state

        def work():
            pixels = state.preprocessor.to_uint8(np.ascontiguousarray(array))
            return pixels, content_key(pixels) if state.cache.max_bytes else ""

        return await asyncio.get_running_loop().run_in_executor(self.classify.decode_executor, work)

    def answer(self, model: Model, payload: InferenceRequest, requested, results: list[dict]) -> Response:
        batch = len(results)
        headers, raws = [], []
        for name, (task, what, datatype), binary, k in requested:
            per_image = [r["results"][task] for r in results]
            tuner = per_image[0]["tuner"]
            if what == "labels":
                labels = [label.encode() for r in per_image for label in r["labels"]]
                shape = [batch, len(per_image[0]["labels"])]
                header, raw = output_tensor(name, "BYTES", shape, labels, binary=binary,
                                            parameters={"tuner": tuner})
            elif k is not None:
                strings = []
                resident = self.state.registry.resident.get(task)
                label_names = resident.labels if resident is not None else ()
                top = min(k, model.classes[task])
                for r in per_image:
                    probs = np.asarray(r["probabilities"], dtype=np.float32)
                    for index in np.argsort(-probs, kind="stable")[:top]:
                        label = label_names[index] if index < len(label_names) else str(index)
                        strings.append(f"{probs[index]:f}:{index}:{label}".encode())
                header, raw = output_tensor(name, "BYTES", [batch, top], strings, binary=binary,
                                            parameters={"tuner": tuner})
            else:
                probs = np.asarray([r["probabilities"] for r in per_image], dtype=np.float32)
                header, raw = output_tensor(name, "FP32", list(probs.shape), probs, binary=binary,
                                            parameters={"tuner": tuner})
            headers.append(header)
            if raw is not None:
                raws.append(raw)
        timings = [r["timings_ms"] for r in results]
        response = {"model_name": model.name, "outputs": headers,
                    "parameters": {f"{key}_ms": max(t[key] for t in timings) for key in ("queue", "backbone", "heads")}}
        if not model.multitask:
            response["model_version"] = results[0]["results"][model.tasks[0]]["tuner"].rsplit("@", 1)[1]
        if payload.id is not None:
            response["id"] = payload.id
        body, extra, content_type = encode_response(response, raws)
        return Response(body, media_type=content_type, headers=extra)


def router(state: ServerState) -> APIRouter:
    api = V2API(state)
    routes = APIRouter(tags=["Open Inference Protocol (v2)"])
    not_ready = {**ERRORS, 400: {"model": ModelReady, "description": "not ready (the protocol's 4xx = false)"}}

    async def ready_answer(model: str, version: str | None):
        try:
            await api.model(model, version)
        except APIError as exc:
            if exc.status != 400:
                raise
            return JSONResponse({"name": model, "ready": False, "error": exc.message}, status_code=400)
        return {"name": model, "ready": True}

    @routes.get("/v2", response_model=ServerMetadata, summary="Server metadata: name, version, extensions")
    async def server_metadata(request: Request):
        return {"name": "restune", "version": request.app.version, "extensions": EXTENSIONS}

    @routes.get("/v2/health/live", response_model=Live, summary="The server is live")
    async def live():
        return {"live": True}

    @routes.get("/v2/health/ready", response_model=Ready, responses={400: {"model": Ready}},
                summary="Ready for inference: backbone loaded, tuners read from the store, not shutting down")
    async def ready():
        if state.draining or not state.ready or not state.synced:
            return JSONResponse({"ready": False, "error": "not ready (GET /readyz says why)"}, status_code=400)
        return {"ready": True}

    @routes.get("/v2/models/{model}", response_model=ModelMetadata, responses=ERRORS,
                summary="Model metadata: versions, inputs and outputs (name, datatype, shape)")
    async def model_metadata(model: str):
        return (await api.model(model)).metadata()

    @routes.get("/v2/models/{model}/versions/{version}", response_model=ModelMetadata, responses=ERRORS,
                summary="Metadata of one model version (the one this replica serves)")
    async def version_metadata(model: str, version: str):
        return (await api.model(model, version)).metadata()

    @routes.get("/v2/models/{model}/ready", response_model=ModelReady, responses=not_ready,
                summary="The model is ready on this replica (200) or not (400, with the reason)")
    async def model_ready(model: str):
        return await ready_answer(model, None)

    @routes.get("/v2/models/{model}/versions/{version}/ready", response_model=ModelReady, responses=not_ready,
                summary="This model version is ready on this replica")
    async def version_ready(model: str, version: str):
        return await ready_answer(model, version)

    @routes.post("/v2/models/{model}/infer", response_class=Response, responses=INFER_ANSWER,
                 openapi_extra=INFER_BODY, summary="Classify a batch of images (IMAGE or PIXELS) with one model")
    async def infer(model: str, request: Request):
        return await api.infer(model, None, request)

    @routes.post("/v2/models/{model}/versions/{version}/infer", response_class=Response, responses=INFER_ANSWER,
                 openapi_extra=INFER_BODY, summary="Classify a batch of images with one model version")
    async def infer_version(model: str, version: str, request: Request):
        return await api.infer(model, version, request)

    return routes
