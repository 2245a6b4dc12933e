"""The Open Inference Protocol's model-repository extension, backed by the tuner store and this replica's set.

- POST /v2/repository/index: every tuner in the store (and any served here), with its state on this replica.
- POST /v2/repository/models/{name}/load: serve the newest stored version here now (admin token).
- POST /v2/repository/models/{name}/unload: stop serving it here; the store keeps it (admin token).

Load and unload change only this replica (the registry's served set); uploading and deleting tuners stay on
/v1/tuners, which every replica follows. The index reads what GET /v1/tuners reads, so it is open like it.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError

from server.auth import require_admin
from server.http import read_body
from server.http_errors import ERRORS, APIError, validation_details
from server.routers.v2 import MULTITASK_MODEL
from server.state import ServerState
from server.store_calls import StoreCalls
from server.v2_schemas import (
    RepositoryAnswer,
    RepositoryIndexRequest,
    RepositoryModel,
    RepositoryRequest,
    inline_schema,
)
from tuner_store.artifact import is_valid_name

SMALL_BODY = 64 * 1024  # these bodies hold a few parameters at most


def _optional_body(model):
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": inline_schema(model)}}}}


async def _parse(request: Request, model):
    """The optional JSON body as `model` (an empty body is the model's defaults)."""
    body = await read_body(request, SMALL_BODY, "the request body")
    if not body.strip():
        return model()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise APIError(422, "invalid request", details=validation_details(exc)) from None


def router(state: ServerState) -> APIRouter:
    routes = APIRouter(tags=["Open Inference Protocol (v2)"])
    store_call = StoreCalls(state)

    def entry(name: str, stored_version: int | None) -> dict:
        status, reason = state.registry.state_of(name)
        record = state.registry.record(name)
        version = record.version if record is not None else stored_version
        return {"name": name, "version": str(version) if version is not None else None, "state": status,
                "reason": reason or ""}

    def check_name(name: str) -> None:
        if name == MULTITASK_MODEL:
            raise APIError(400, f"{MULTITASK_MODEL!r} runs whichever tuners are loaded; load or unload tuners")
        if not is_valid_name(name):
            raise APIError(404, f"no tuner named {name!r}")

    @routes.post("/v2/repository/index", response_model=list[RepositoryModel], responses=ERRORS,
                 openapi_extra=_optional_body(RepositoryIndexRequest),
                 summary="Every tuner and its state on this replica (READY or UNAVAILABLE, with the reason)")
    async def index(request: Request):
        wanted = await _parse(request, RepositoryIndexRequest)
        registry = state.registry  # its catalog: the store's records as this replica follows them
        names = sorted(set(registry.names()) | registry.unloaded)
        models = [entry(name, None) for name in names]
        if wanted.ready:
            models = [m for m in models if m["state"] == "READY"]
        return models

    @routes.post("/v2/repository/models/{model}/load", response_model=RepositoryAnswer, responses=ERRORS,
                 openapi_extra=_optional_body(RepositoryRequest),
                 summary="Serve the tuner's newest stored version on this replica (admin token)")
    async def load(model: str, request: Request):
        require_admin(request, state.settings.admin_token)
        check_name(model)
        body = await _parse(request, RepositoryRequest)
        given = [k for k in (body.parameters or {}) if k == "config" or k.startswith("file:")]
        if given:
            raise APIError(400, f"{', '.join(given)}: models are tuner artifacts from the store; upload one "
                                "with POST /v1/tuners")
        loaded = await store_call(state.registry.load, model)
        return {"name": loaded.name, "version": str(loaded.version), "state": "READY", "reason": ""}

    @routes.post("/v2/repository/models/{model}/unload", response_model=RepositoryAnswer, responses=ERRORS,
                 openapi_extra=_optional_body(RepositoryRequest),
                 summary="Stop serving the tuner on this replica; the store keeps it (admin token)")
    async def unload(model: str, request: Request):
        require_admin(request, state.settings.admin_token)
        check_name(model)
        await _parse(request, RepositoryRequest)  # unload_dependents: a tuner has no dependents
        await store_call(state.registry.unload, model)
        return entry(model, None)

    return routes
