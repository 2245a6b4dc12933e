"""The FastAPI application: HTTP in, batcher and registry behind it.

The HTTP layer validates and decodes; the batcher gathers requests; the runner
does one backbone pass per batch and all heads through the engine. Tuner writes
go to the store; the registry's watcher hot-loads them (here and on every other
replica watching the same store).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from server.auth import require_admin
from server.batcher import QueueFullError
from server.http_errors import APIError, install_error_handlers
from server.runner import ClassifyRequest, NoTunersError, UnknownTasksError
from server.schemas import (
    MAX_TASKS_PER_REQUEST,
    MAX_TOP_K,
    ClassifyJSONRequest,
    ClassifyResponse,
    DeleteResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    PutResponse,
    TunerDetail,
    TunerList,
)
from server.settings import ServerSettings
from server.state import ServerState
from server.torch_threads import helper_executor

log = logging.getLogger(__name__)

READINESS_STORE_WAIT_S = 2.0  # below the readiness probe's timeoutSeconds in deploy/kubernetes
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)}
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
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise APIError(413, f"{what} is {int(declared)} bytes; the limit is {limit}")
        except ValueError:
            raise APIError(400, "invalid Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"{what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's own cache: form() parses from it instead of the spent stream
    return body


async def read_multipart_file(request: Request, limit: int, what: str):
    """(form, bytes of its file field 'file') from a multipart body of at most `limit` bytes."""
    await read_body(request, limit, "the request body")
    try:
        form = await request.form()
    except Exception:
        raise APIError(400, "malformed multipart body") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise APIError(400, f"multipart requests need {what} as the file field 'file'")
    return form, await upload.read()


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_tasks(value) -> list[str] | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    tasks = [t.strip() for t in items if t and t.strip()]
    if len(tasks) > MAX_TASKS_PER_REQUEST:
        raise APIError(400, f"at most {MAX_TASKS_PER_REQUEST} tasks per request")
    return tasks or None


class MetricsMiddleware:
    """Request counts and latency per route template, as plain ASGI (Starlette's BaseHTTPMiddleware
    wraps every response in an extra task and stream, which costs more than the metrics themselves)."""

    def __init__(self, app, metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(endpoint, method, str(status[0])).inc()
            self.metrics.latency.labels(endpoint, method).observe(time.perf_counter() - start)


def create_app(settings: ServerSettings | None = None, *, state: ServerState | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    state = state or ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="restune",
        version="0.1.0",
        description="Multi-task inference on one frozen backbone with hot-loaded Res-Tuning-Bypass heads.",
        lifespan=lifespan,
    )
    app.state.restune = state
    install_error_handlers(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    image_limit = int(settings.max_image_mb * 1024 * 1024)
    # Decoding runs beside the model thread; one worker is enough to keep batches full and, unlike a
    # wide pool, does not pre-empt the backbone's intra-op threads several times over.
    decode_executor = helper_executor(max_workers=1, thread_name_prefix="restune-decode")
    upload_limit = int(settings.max_upload_mb * 1024 * 1024)

    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    # -- classify ------------------------------------------------------------------------------

    async def decode_pixels(data: bytes):
        from restuning.errors import InputError
        from restuning.preprocess import load_image
        from server.feature_cache import content_key

        if len(data) > image_limit:
            raise APIError(413, f"the image is {len(data)} bytes; the limit is {image_limit}")

        def work():
            try:
                image = load_image(data, max_pixels=settings.max_image_pixels)
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
            return await asyncio.get_running_loop().run_in_executor(decode_executor, work)
        except InputError as exc:
            raise APIError(400, f"bad image: {exc}") from None

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=ERRORS,
        openapi_extra=CLASSIFY_BODY,
        summary="Classify one image across many tasks with one backbone forward",
    )
    async def classify(request: Request):
        kind = media_type(request)
        body_limit = image_limit * 4 // 3 + 64 * 1024  # base64 or multipart framing around one image
        if kind == "application/json":
            body = await read_body(request, body_limit, "the request body")
            try:
                payload = ClassifyJSONRequest.model_validate_json(body)
            except ValueError as exc:
                errors = getattr(exc, "errors", lambda: [])()
                details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in errors]
                raise APIError(422, "invalid request", details=details) from None
            try:
                data = base64.b64decode(payload.image, validate=True)
            except (binascii.Error, ValueError):
                raise APIError(400, "'image' is not valid base64") from None
            tasks, top_k = parse_tasks(payload.tasks), payload.top_k
        elif kind == "multipart/form-data":
            form, data = await read_multipart_file(request, body_limit, "the image")
            tasks = parse_tasks(form.getlist("tasks") or None)
            raw_top_k = form.get("top_k")
            top_k = None
            if raw_top_k not in (None, ""):
                try:
                    top_k = int(raw_top_k)
                except ValueError:
                    raise APIError(422, f"top_k must be an integer, got {raw_top_k!r}") from None
                if not 1 <= top_k <= MAX_TOP_K:
                    raise APIError(422, f"top_k must be between 1 and {MAX_TOP_K}")
        else:
            raise APIError(415, f"unsupported content type {kind or '(none)'!r}; send application/json or multipart/form-data")
        if not data:
            raise APIError(400, "the image is empty")
        snapshot = state.registry.snapshot
        if tasks:
            wrong_kind = [t for t in tasks if t in snapshot.diffusion]
            if wrong_kind:
                raise APIError(400, f"{', '.join(wrong_kind)}: diffusion (style) tuner(s); use POST /v1/generate",
                               wrong_kind=wrong_kind)
            unknown = [t for t in tasks if t not in snapshot.classifiers]
            if unknown:
                raise APIError(404, f"unknown task(s): {', '.join(unknown)}", unknown=unknown,
                               available=sorted(snapshot.classifiers))
        elif not snapshot.classifiers:
            raise APIError(404, "no classification tuners are loaded; upload one with POST /v1/tuners")
        pixels, key = await decode_pixels(data)
        job = ClassifyRequest(pixels=pixels, cache_key=key, tasks=tasks, top_k=top_k or settings.default_top_k)
        try:
            result = await state.batcher.submit(job)
        except QueueFullError as exc:
            state.metrics.rejected.inc()
            raise APIError(503, f"overloaded: {exc}", headers={"Retry-After": "1"}) from None
        except UnknownTasksError as exc:  # deleted between the check above and the batch
            raise APIError(404, f"unknown task(s): {', '.join(exc.unknown)}", unknown=exc.unknown,
                           available=exc.loaded) from None
        except NoTunersError as exc:
            raise APIError(404, str(exc)) from None
        return JSONResponse(result)

    # -- generate ------------------------------------------------------------------------------

    @app.post("/v1/generate", response_model=GenerateResponse, responses=ERRORS,
              summary="Generate images for every prompt x style pair in one batched pass")
    async def generate(payload: GenerateRequest):
        from restuning.diffusion.pipeline import BASE_STYLE, GenerationInputError
        from server.generation import GenerationBusyError

        if state.generator is None:
            raise APIError(404, "image generation is not enabled on this server; start it with --diffusion-model")
        snapshot = state.registry.snapshot
        wrong_kind = [s for s in payload.styles if s in snapshot.classifiers]
        if wrong_kind:
            raise APIError(400, f"{', '.join(wrong_kind)}: classification tuner(s), not styles; "
                                "generation needs diffusion tuners", wrong_kind=wrong_kind)
        unknown = [s for s in payload.styles if s != BASE_STYLE and s not in snapshot.diffusion]
        if unknown:
            raise APIError(404, f"unknown style(s): {', '.join(unknown)}", unknown=unknown,
                           available=[BASE_STYLE, *sorted(snapshot.diffusion)])
        body = {"prompts": payload.prompts, "styles": payload.styles,
                "options": payload.model_dump(exclude={"prompts", "styles"}, exclude_none=True)}
        try:
            state.generator.validate(body, [BASE_STYLE, *snapshot.diffusion])
        except GenerationInputError as exc:
            raise APIError(400, str(exc), problems=exc.problems) from None
        tuners = {s: snapshot.diffusion[s].module for s in payload.styles if s in snapshot.diffusion}
        try:
            return JSONResponse(await state.generator.generate(body, tuners))
        except GenerationBusyError as exc:
            raise APIError(503, f"overloaded: {exc}", headers={"Retry-After": "5"}) from None
        except GenerationInputError as exc:
            raise APIError(400, str(exc), problems=exc.problems) from None

    # -- tuners --------------------------------------------------------------------------------

    def public(message: str) -> str:
        """A store message fit for clients: where the store lives (a path, a Redis address) stays in the log."""
        for where in (getattr(state.store, "url", None), getattr(state.store, "root", None)):
            if where:
                message = message.replace(str(where), "the tuner store")
        return message

    def store_call(fn, *args):
        from tuner_store.errors import (ArtifactError, ConflictError, NotFoundError, StoreError,
                                        StoreUnavailableError)

        async def call():
            try:
                return await asyncio.to_thread(fn, *args)
            except StoreUnavailableError as exc:
                log.warning("%s", exc)
                raise APIError(503, "tuner store unavailable: it cannot be reached right now; the tuners already "
                                    "loaded keep serving; retry later", headers={"Retry-After": "2"}) from None
            except NotFoundError as exc:
                raise APIError(404, public(str(exc))) from None
            except ArtifactError as exc:
                raise APIError(400, public(f"invalid artifact: {exc}"), problems=list(exc.problems)) from None
            except ConflictError as exc:
                raise APIError(409, public(str(exc))) from None
            except StoreError as exc:  # the backend answered, with an error (e.g. Redis out of memory)
                log.warning("%s", exc)
                raise APIError(503, "tuner store error; retry later", headers={"Retry-After": "2"}) from None

        return call()

    def summary(record, extra: dict | None = None) -> dict:
        served = state.registry.snapshot.get(record.name)
        return dict(
            name=record.name, version=record.version, ref=f"{record.name}@{record.version}", kind=record.kind,
            sha256=record.sha256, num_labels=record.num_labels, backbone_name=record.backbone_name,
            backbone_fingerprint=record.backbone_fingerprint, created_at=record.created_at,
            size_bytes=record.size_bytes, serving=served is not None and served.version == record.version,
            serving_version=served.version if served is not None else None, metrics=record.metrics,
            problem=state.registry.failures.get(record.name), **(extra or {}),
        )

    @app.get("/v1/tuners", response_model=TunerList, responses=ERRORS,
             summary="List tuners: the newest version of each, or every version with ?all_versions=true")
    async def list_tuners(all_versions: bool = False):
        if all_versions:
            records = await store_call(state.store.list)
        else:
            records = [r for _, r in sorted((await store_call(state.store.latest)).items())]
        revision = await store_call(state.store.revision)
        return {"tuners": [summary(r) for r in records], "store_revision": revision}

    @app.get("/v1/tuners/{name}", response_model=TunerDetail, responses=ERRORS, summary="One tuner's details")
    async def get_tuner(name: str, version: int | None = Query(None, ge=1)):
        record = await store_call(state.store.record, name, version or "latest")
        artifact = await store_call(state.store.get, name, record.version)
        versions = [r.version for r in await store_call(state.store.list) if r.name == name]
        return summary(record, {"labels": list(artifact.labels), "versions": versions, "tuner": artifact.tuner})

    @app.get("/v1/tuners/{name}/artifact", responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}}},
             response_class=Response, summary="Download a tuner artifact (.safetensors)")
    async def download_tuner(name: str, version: int | None = Query(None, ge=1)):
        record = await store_call(state.store.record, name, version or "latest")
        data = await store_call(state.store.get_bytes, name, record.version)
        return Response(data, media_type="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{record.name}@{record.version}.safetensors"'})

    @app.post("/v1/tuners", status_code=201, response_model=PutResponse, responses=ERRORS, openapi_extra=UPLOAD_BODY,
              summary="Upload a tuner artifact (one .safetensors file); it hot-loads on every replica")
    async def put_tuner(request: Request):
        from tuner_store.artifact import decode_artifact
        from tuner_store.errors import ArtifactError

        require_admin(request, settings.admin_token)
        kind = media_type(request)
        if kind == "application/octet-stream":
            data = await read_body(request, upload_limit, "the artifact")
        elif kind == "multipart/form-data":
            _, data = await read_multipart_file(request, upload_limit + 64 * 1024, "the artifact")
            if len(data) > upload_limit:
                raise APIError(413, f"the artifact is {len(data)} bytes; the limit is {upload_limit}")
        else:
            raise APIError(415, f"unsupported content type {kind or '(none)'!r}; send application/octet-stream "
                                "or multipart/form-data with the field 'file'")

        def validate():
            artifact = decode_artifact(data, max_bytes=upload_limit)
            if artifact.kind == "classification":
                return decode_artifact(data, max_bytes=upload_limit, backbone_fingerprint=state.backbone.fingerprint())
            if artifact.kind == "diffusion" and state.generator is not None:
                return decode_artifact(data, max_bytes=upload_limit, backbone_fingerprint=state.generator.fingerprint)
            return artifact

        try:
            artifact = await asyncio.to_thread(validate)
        except ArtifactError as exc:
            raise APIError(400, f"invalid artifact: {exc}", problems=list(exc.problems)) from None
        before = await store_call(state.store.latest)
        record = await store_call(state.store.put, artifact)
        created = not (record.name in before and before[record.name].version == record.version)
        return {"name": record.name, "version": record.version, "ref": f"{record.name}@{record.version}",
                "created": created}

    @app.delete("/v1/tuners/{name}", response_model=DeleteResponse, responses=ERRORS,
                summary="Delete a tuner (all versions, or one with ?version=N)")
    async def delete_tuner(name: str, request: Request, version: int | None = Query(None, ge=1)):
        require_admin(request, settings.admin_token)
        deleted = await store_call(state.store.delete, name, version)
        return {"name": name, "deleted_versions": list(deleted)}

    # -- health --------------------------------------------------------------------------------

    @app.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready for traffic: backbone loaded, tuners read from the store, not shutting down",
             responses={503: {"model": ErrorResponse}})
    async def readyz():
        # The store's reachability is reported but does not make a replica unready once it has read the tuners:
        # classify never touches the store, and during a store outage every replica would go unready together,
        # leaving a load balancer (a Kubernetes Service) with no replica at all while each could serve.
        problems = []
        if state.draining:
            problems.append("shutting down")
        if not state.ready or state.backbone is None:
            problems.append("backbone not loaded")
        elif not state.synced:
            problems.append("tuners not loaded from the store yet (the server log says why)")
        try:
            # bounded: a hung store (not a refusing one) must not make the probe time out
            await asyncio.wait_for(asyncio.to_thread(state.store.ping), READINESS_STORE_WAIT_S)
            store = "reachable"
        except Exception as exc:
            log.warning("readiness: tuner store: %s", exc or type(exc).__name__)
            store = "unreachable"
        snapshot = state.registry.snapshot if state.registry else None
        body = {
            "backbone": state.backbone.info.name if state.backbone else None,
            "classification_tuners": len(snapshot.classifiers) if snapshot else 0,
            "diffusion_tuners": len(snapshot.diffusion) if snapshot else 0,
            "store_revision": snapshot.revision if snapshot else 0,
            "store": store,
        }
        if problems:
            return JSONResponse({"error": "; ".join(problems), **body}, status_code=503)
        return {"status": "ready", **body}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        data, content_type = state.metrics.render()
        return Response(data, media_type=content_type)

    return app
