"""POST /v1/classify, in three steps: decode the request, predict through the batcher, encode the response.

Decoding validates everything a client can get wrong (body size, content type, options, base64, task names,
the image itself) before a request joins a batch; prediction is one backbone pass per batch and every head at
once (server.runner); encoding is the response model, validated on the way out.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass

from fastapi import APIRouter, Request
from pydantic import ValidationError

from restuning.errors import InputError
from restuning.preprocess import load_image
from restuning.torch_threads import helper_executor
from server.batcher import QueueFullError
from server.feature_cache import content_key
from server.http import MULTIPART_OVERHEAD, media_type, read_body, read_multipart_file, unsupported
from server.http_errors import ERRORS, APIError, validation_details
from server.kinds import SERVED_KINDS
from server.routers.leases import hold
from server.runner import DEFERRED, ClassifyRequest, UnknownTasksError
from server.schemas import MAX_TOP_K, ClassifyJSONRequest, ClassifyOptions, ClassifyResponse
from server.state import ServerState
from tuner_store.kinds import CLASSIFICATION

log = logging.getLogger(__name__)

CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ClassifyJSONRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "tasks": {"type": "string", "description": "comma-separated task names"},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
                    },
                }
            },
        },
    }
}


# A request without tasks runs every classification tuner while the store holds at most this many; beyond,
# the pinned ones (the operator's default set), and with none pinned the request must name its tasks.
DEFAULT_TASKS_LIMIT = 64
MAX_NAMES_LISTED = 64  # an error lists at most this many available names (a store may hold thousands)


def _release_lease(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().release()


def default_tasks(registry) -> list[str]:
    classifiers = registry.records(CLASSIFICATION.name)
    if not classifiers:
        raise APIError(404, "no classification tuners are loaded; upload one with POST /v1/tuners")
    if len(classifiers) <= DEFAULT_TASKS_LIMIT:
        return sorted(n for n in classifiers if registry.serves(n)[0])
    pinned = sorted(n for n in registry.resident.pinned if n in classifiers and registry.serves(n)[0])
    if pinned:
        return pinned
    raise APIError(400, f"name the tasks: this server holds {len(classifiers)} classification tuners (more than "
                        f"{DEFAULT_TASKS_LIMIT}) and none is pinned as the default set (restune serve --pin NAME)",
                   tuner_count=len(classifiers))


@dataclass
class ClassifyInput:
    image: bytes
    tasks: list[str] | None
    top_k: int | None


def split_tasks(value: list[str] | None) -> list[str] | None:
    """Task names from a JSON list or from form fields, each of which may hold several, comma-separated."""
    if value is None:
        return None
    tasks = [t.strip() for item in value for t in str(item).split(",") if t.strip()]
    return tasks or None


def _options(raw: dict) -> ClassifyOptions:
    try:
        return ClassifyOptions.model_validate({k: v for k, v in raw.items() if v not in (None, "")})
    except ValidationError as exc:
        raise APIError(422, "invalid request", details=validation_details(exc)) from None


class ClassifyAPI:
    def __init__(self, state: ServerState):
        self.state = state
        settings = state.settings
        self.image_limit = int(settings.max_image_mb * 1024 * 1024)
        self.body_limit = self.image_limit * 4 // 3 + MULTIPART_OVERHEAD  # base64 or multipart around one image
        # Decoding runs beside the model thread; one worker is enough to keep batches full and, unlike a
        # wide pool, does not pre-empt the backbone's intra-op threads several times over.
        self.decode_executor = helper_executor(max_workers=1, thread_name_prefix="restune-decode")

    @classmethod
    def of(cls, state: ServerState) -> "ClassifyAPI":
        """The server's one ClassifyAPI: /v1 and /v2 share its decode thread, as they share the batcher."""
        api = getattr(state, "classify_api", None)
        if api is None:
            api = state.classify_api = cls(state)
        return api

    async def decode_request(self, request: Request) -> ClassifyInput:
        kind = media_type(request)
        if kind == "application/json":
            body = await read_body(request, self.body_limit, "the request body")
            try:
                payload = ClassifyJSONRequest.model_validate_json(body)
            except ValidationError as exc:
                raise APIError(422, "invalid request", details=validation_details(exc)) from None
            try:
                image = base64.b64decode(payload.image, validate=True)
            except (binascii.Error, ValueError):
                raise APIError(400, "'image' is not valid base64") from None
            options = payload
        elif kind == "multipart/form-data":
            form, image = await read_multipart_file(request, self.body_limit, "the image")
            options = _options({"tasks": form.getlist("tasks") or None, "top_k": form.get("top_k")})
        else:
            raise unsupported(kind, "application/json or multipart/form-data")
        if not image:
            raise APIError(400, "the image is empty")
        return ClassifyInput(image=image, tasks=split_tasks(options.tasks), top_k=options.top_k)

    def tasks_for(self, tasks: list[str] | None) -> list[str]:
        """The request's tasks, checked; without any, the default set (see DEFAULT_TASKS_LIMIT)."""
        registry = self.state.registry
        classifiers = registry.records(CLASSIFICATION.name)
        if not tasks:
            return default_tasks(registry)
        others = {t: registry.record(t) for t in tasks if t not in classifiers and registry.record(t) is not None}
        if others:
            kinds = sorted({r.kind for r in others.values()})
            where = ", ".join(SERVED_KINDS[k].endpoint for k in kinds)
            raise APIError(400, f"{', '.join(others)}: {' / '.join(kinds)} tuner(s), not classification; use {where}",
                           wrong_kind=list(others))
        unknown = [t for t in tasks if t not in classifiers]
        if unknown:
            raise APIError(404, f"unknown task(s): {', '.join(unknown)}", unknown=unknown,
                           available=sorted(classifiers)[:MAX_NAMES_LISTED],
                           available_count=len(classifiers))
        not_served = {t: why for t in tasks for ok, why in [registry.serves(t)] if not ok}
        if not_served:
            raise APIError(404, "; ".join(f"{t}: {why}" for t, why in not_served.items()),
                           unknown=list(not_served))
        return tasks

    async def pixels(self, data: bytes):
        """uint8 pixels resized for the backbone, and their content key for the feature cache."""
        if len(data) > self.image_limit:
            raise APIError(413, f"the image is {len(data)} bytes; the limit is {self.image_limit}")
        state = self.state

        def work():
            try:
                image = load_image(data, max_pixels=state.settings.max_image_pixels)
            except InputError:
                raise
            except Exception as exc:  # a Pillow decoder failing on hostile bytes in a way load_image does not
                # name (e.g. NotImplementedError from a DDS header): the client's bad input, not our 500
                log.info("image decoder failed: %s: %s", type(exc).__name__, exc)
                raise InputError(f"could not decode the image ({type(exc).__name__})") from None
            # uint8 only: the batch is normalised at once on the model thread (see ClassifyRunner)
            pixels = state.preprocessor.to_uint8(image)
            # hashing the pixels is wasted work when there is no cache to look in
            return pixels, content_key(pixels) if state.cache.max_bytes else ""

        try:
            return await asyncio.get_running_loop().run_in_executor(self.decode_executor, work)
        except InputError as exc:
            raise APIError(400, f"bad image: {exc}") from None

    async def predict(self, request: ClassifyInput) -> dict:
        named = self.tasks_for(request.tasks) if request.tasks else None  # before the image: the cheaper check
        pixels, key = await self.pixels(request.image)
        top_k = request.top_k or self.state.settings.default_top_k
        if named:
            return await self.submit(ClassifyRequest(pixels=pixels, cache_key=key, top_k=top_k, tasks=named))
        for attempt in range(3):  # the default set: a tuner deleted while it loads is left out, not an error
            try:
                return await self.submit(ClassifyRequest(pixels=pixels, cache_key=key, top_k=top_k,
                                                         tasks=self.tasks_for(None), named=False))
            except APIError as exc:
                if exc.status != 404 or attempt == 2:
                    raise

    async def submit(self, job: ClassifyRequest) -> dict:
        """One image through the batcher (shared with /v2 infer), its tuners held resident meanwhile; its failures
        as HTTP answers.

        Tuners that are not resident load while the image runs through the backbone (the batch's heads wait for
        them briefly, see server.runner): a miss costs the request what the load takes beyond the backbone pass.
        """
        began = time.perf_counter()
        lease = self.state.registry.lease_if_resident(job.tasks)
        loading = loaded_after = None
        if lease is None:
            loading = asyncio.ensure_future(hold(self.state, job.tasks))
            job.residency = Future()

            def resident(task: asyncio.Task) -> None:
                nonlocal loaded_after
                loaded_after = time.perf_counter() - began
                if task.cancelled():  # the server is stopping
                    job.residency.set_result(APIError(503, "the server is shutting down", headers={"Retry-After": "1"}))
                else:
                    job.residency.set_result(task.exception())  # None: resident and held

            loading.add_done_callback(resident)
        try:
            requeued_at = began
            while True:
                result = await self.state.batcher.submit(job)
                if result is not DEFERRED:
                    break
                await asyncio.wait([loading])  # its tuners are resident (or failed) now: again, with its features cached
                requeued_at = time.perf_counter()
            timings = result["timings_ms"]
            timings["tuner_load"] = round((requeued_at - began) * 1000 + timings.pop("tuner_wait"), 3)
            if loaded_after is not None:
                timings["tuner_load_total"] = round(loaded_after * 1000, 3)
            return result
        except QueueFullError as exc:
            self.state.metrics.rejected.inc()
            raise APIError(503, f"overloaded: {exc}", headers={"Retry-After": "1"}) from None
        except UnknownTasksError as exc:  # deleted between the check and the batch
            raise APIError(404, f"unknown task(s): {', '.join(exc.unknown)}", unknown=exc.unknown) from None
        finally:
            if lease is not None:
                lease.release()
            if loading is not None:  # at once if it is held already, else as soon as the load ends
                loading.add_done_callback(_release_lease)

    def encode_response(self, result: dict) -> dict:
        """The runner's result as the response body; FastAPI validates it against ClassifyResponse on the way out."""
        return result


def router(state: ServerState) -> APIRouter:
    api = ClassifyAPI.of(state)
    routes = APIRouter()

    @routes.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS, openapi_extra=CLASSIFY_BODY,
                 summary="Classify one image across many tasks with one backbone forward")
    async def classify(request: Request):
        return api.encode_response(await api.predict(await api.decode_request(request)))

    return routes
