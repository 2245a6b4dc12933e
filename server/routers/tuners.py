"""/v1/tuners: list, show, download, upload and delete tuner artifacts in the store.

Writes go to the store; the registry's watcher hot-loads them here and on every other replica watching it.
Store errors become the right HTTP status; where the store lives (a path, a Redis address) stays in the log.
"""
from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from server.auth import require_admin
from server.http import MULTIPART_OVERHEAD, media_type, read_body, read_multipart_file, unsupported
from server.http_errors import ERRORS, APIError
from server.registry import NotServedError, check_serves
from server.residency import ResidencyError
from server.schemas import DeleteResponse, PutResponse, TunerDetail, TunerList
from server.state import ServerState
from server.store_calls import StoreCalls
from tuner_store.records import TunerRecord

log = logging.getLogger(__name__)

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                    "description": "a restune tuner artifact (.safetensors)"}},
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary",
                                                   "description": "a restune tuner artifact (.safetensors)"}}}
            },
        },
    }
}


LIST_LIMIT = 500
MAX_LIST_LIMIT = 1000


def _position(record: TunerRecord) -> tuple[str, int]:
    return record.name, record.version


def _cursor_position(cursor: str) -> tuple[str, int]:
    name, _, version = cursor.partition("@")
    return name, int(version) if version.isdigit() else 0


def router(state: ServerState) -> APIRouter:
    routes = APIRouter()
    upload_limit = int(state.settings.max_upload_mb * 1024 * 1024)
    uploads = {"running": 0}  # uploads being read and validated now (one event loop: no lock needed)

    store_call = StoreCalls(state)

    def summary(record: TunerRecord, **extra) -> dict:
        """The stored record, and what this server makes of it."""
        registry = state.registry
        newest = registry.record(record.name)
        resident = registry.resident.get(record.name)
        servable = registry.serves(record.name)[0]
        failure = registry.failures.get(record.name)
        serving_version = resident.version if resident is not None else (newest.version if servable else None)
        return {**record.to_json(), "ref": record.ref,
                "serving": servable and newest is not None and newest.version == record.version,
                "serving_version": serving_version,
                "resident": resident is not None and resident.version == record.version,
                "pinned": record.name in registry.resident.pinned,
                "problem": failure[1] if failure is not None else (None if servable else registry.serves(record.name)[1]),
                **extra}

    def matches(record: TunerRecord, prefix: str | None, kind: str | None, wanted: str | None) -> bool:
        if prefix and not record.name.startswith(prefix):
            return False
        if kind and record.kind != kind:
            return False
        if wanted == "resident":
            return record.name in state.registry.resident
        if wanted == "serving":
            return state.registry.serves(record.name)[0]
        if wanted == "problem":
            return not state.registry.serves(record.name)[0] or record.name in state.registry.failures
        return True

    @routes.get("/v1/tuners", response_model=TunerList, responses=ERRORS,
                summary="List tuners, a page at a time: the newest version of each (from the store's records), or "
                        "every version with ?all_versions=true")
    async def list_tuners(
        all_versions: bool = False,
        limit: int = Query(LIST_LIMIT, ge=1, le=MAX_LIST_LIMIT, description="tuners per page"),
        cursor: str | None = Query(None, description="the next_cursor of the previous page"),
        prefix: str | None = Query(None, description="only names that start with this"),
        kind: Literal["classification", "diffusion"] | None = Query(None),
        state_: Literal["resident", "serving", "problem"] | None = Query(
            None, alias="state", description="resident: placed for serving now; serving: answered here (resident "
                                             "or loaded on its first request); problem: cannot serve here"),
    ):
        if all_versions:
            records = await store_call(state.store.list)
        else:
            records = [state.registry.record(n) for n in state.registry.names()]
        # names (and name@version) sort in the same order every time: a cursor stays valid while tuners come
        # and go, and a page never repeats or skips what was there before it
        page, next_cursor = [], None
        after = _cursor_position(cursor) if cursor is not None else None
        for record in records:
            if record is None:
                continue
            if after is not None and (_position(record) if all_versions else record.name) <= (
                    after if all_versions else after[0]):
                continue
            if not matches(record, prefix, kind, state_):
                continue
            if len(page) == limit:
                next_cursor = page[-1].ref
                break
            page.append(record)
        return {"tuners": [summary(r) for r in page], "store_revision": state.registry.revision,
                "next_cursor": next_cursor}

    @routes.post("/v1/tuners/{name}/pin", responses=ERRORS, summary="Keep a tuner resident on this replica")
    async def pin(name: str, request: Request):
        require_admin(request, state.settings.admin_token)
        await call_registry(state.registry.pin, name)
        return {"name": name, "pinned": True}

    @routes.delete("/v1/tuners/{name}/pin", responses=ERRORS, summary="Let a tuner be evicted again")
    async def unpin(name: str, request: Request):
        require_admin(request, state.settings.admin_token)
        state.registry.unpin(name)
        return {"name": name, "pinned": False}

    async def call_registry(fn, *args):
        try:
            return await store_call(fn, *args)
        except (ResidencyError, NotServedError) as exc:
            raise APIError(503 if isinstance(exc, ResidencyError) else 404, str(exc)) from None

    @routes.get("/v1/tuners/{name}", response_model=TunerDetail, responses=ERRORS, summary="One tuner's details")
    async def get_tuner(name: str, version: int | None = Query(None, ge=1)):
        record = await store_call(state.store.record, name, version or "latest")
        artifact = await store_call(state.store.get, name, record.version)
        versions = [r.version for r in await store_call(state.store.list) if r.name == name]
        return summary(record, labels=list(artifact.labels), versions=versions, tuner=artifact.tuner)

    @routes.get("/v1/tuners/{name}/artifact", response_class=Response, summary="Download a tuner artifact (.safetensors)",
                responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}}})
    async def download_tuner(name: str, version: int | None = Query(None, ge=1)):
        record = await store_call(state.store.record, name, version or "latest")
        data = await store_call(state.store.get_bytes, name, record.version)
        return Response(data, media_type="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{record.name}@{record.version}.safetensors"'})

    async def applied(name: str) -> None:
        """The change, applied here now; a store that fails meanwhile leaves it to the watcher (the write is done)."""
        try:  # on the upload thread too: it decodes the new version into the host cache
            await store_call(state.registry.apply_change, name, 0, executor=state.uploads)
        except APIError as exc:
            log.warning("%s: stored, not applied here yet (%s); the store watcher will", name, exc.message)

    @routes.post("/v1/tuners", status_code=201, response_model=PutResponse, responses=ERRORS,
                 openapi_extra=UPLOAD_BODY,
                 summary="Upload a tuner artifact (one .safetensors file); it hot-loads on every replica")
    async def put_tuner(request: Request):
        require_admin(request, state.settings.admin_token)
        limit = state.settings.max_concurrent_uploads
        if uploads["running"] >= limit:
            # each upload holds its body, and its decoded tensors while it is validated: a bound on how many run
            # at once is a bound on the memory uploads take (docs/reliability.md)
            raise APIError(503, f"{limit} uploads are in progress; retry shortly", headers={"Retry-After": "1"})
        uploads["running"] += 1
        try:
            return await _put_tuner(request)
        finally:
            uploads["running"] -= 1

    async def _put_tuner(request: Request) -> dict:
        kind = media_type(request)
        if kind == "application/octet-stream":
            data = await read_body(request, upload_limit, "the artifact")
        elif kind == "multipart/form-data":
            _, data = await read_multipart_file(request, upload_limit + MULTIPART_OVERHEAD, "the artifact")
            if len(data) > upload_limit:
                raise APIError(413, f"the artifact is {len(data)} bytes; the limit is {upload_limit}")
        else:
            raise unsupported(kind, "application/octet-stream or multipart/form-data with the field 'file'")
        # validated on the upload thread (one upload at a time, below serving's CPU priority: server/uploads.py),
        # without the store's deadline: it waits on the CPU, not on the store
        validated = await store_call(lambda: state.store.validate(data, check=check_serves(state.runtime)),
                                     executor=state.uploads, deadline=False)
        del data  # the decoded artifact is all that is needed now; an upload's memory goes as soon as it can
        before = await store_call(state.store.latest)
        record = await store_call(state.store.put_validated, validated, executor=state.uploads)
        del validated
        # this replica reads its own writes at once; the watcher brings the same change to every other one
        await applied(record.name)
        created = not (record.name in before and before[record.name].version == record.version)
        return {"name": record.name, "version": record.version, "ref": record.ref, "created": created}

    @routes.delete("/v1/tuners/{name}", response_model=DeleteResponse, responses=ERRORS,
                   summary="Delete a tuner (all versions, or one with ?version=N)")
    async def delete_tuner(name: str, request: Request, version: int | None = Query(None, ge=1)):
        require_admin(request, state.settings.admin_token)
        deleted = await store_call(state.store.delete, name, version)
        await applied(name)  # read your own writes (see put_tuner)
        return {"name": name, "deleted_versions": list(deleted)}

    return routes
