"""/v1/tuners: list, show, download, upload and delete tuner artifacts in the store.

Writes go to the store; the registry's watcher hot-loads them here and on every other replica watching it.
Store errors become the right HTTP status; where the store lives (a path, a Redis address) stays in the log.
"""
from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from server.auth import require_admin
from server.http import MULTIPART_OVERHEAD, media_type, read_body, read_multipart_file, unsupported
from server.http_errors import ERRORS, APIError
from server.registry import check_serves
from server.schemas import DeleteResponse, PutResponse, TunerDetail, TunerList
from server.state import ServerState
from server.store_calls import StoreCalls
from tuner_store.records import TunerRecord

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


def router(state: ServerState) -> APIRouter:
    routes = APIRouter()
    upload_limit = int(state.settings.max_upload_mb * 1024 * 1024)

    store_call = StoreCalls(state)

    def summary(record: TunerRecord, **extra) -> dict:
        """The stored record, and what this server makes of it."""
        served = state.registry.snapshot.get(record.name)
        return {**record.to_json(), "ref": record.ref,
                "serving": served is not None and served.version == record.version,
                "serving_version": served.version if served is not None else None,
                "problem": state.registry.failures.get(record.name), **extra}

    @routes.get("/v1/tuners", response_model=TunerList, responses=ERRORS,
                summary="List tuners: the newest version of each, or every version with ?all_versions=true")
    async def list_tuners(all_versions: bool = False):
        if all_versions:
            records = await store_call(state.store.list)
        else:
            records = [r for _, r in sorted((await store_call(state.store.latest)).items())]
        revision = await store_call(state.store.revision)
        return {"tuners": [summary(r) for r in records], "store_revision": revision}

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

    @routes.post("/v1/tuners", status_code=201, response_model=PutResponse, responses=ERRORS,
                 openapi_extra=UPLOAD_BODY,
                 summary="Upload a tuner artifact (one .safetensors file); it hot-loads on every replica")
    async def put_tuner(request: Request):
        require_admin(request, state.settings.admin_token)
        kind = media_type(request)
        if kind == "application/octet-stream":
            data = await read_body(request, upload_limit, "the artifact")
        elif kind == "multipart/form-data":
            _, data = await read_multipart_file(request, upload_limit + MULTIPART_OVERHEAD, "the artifact")
            if len(data) > upload_limit:
                raise APIError(413, f"the artifact is {len(data)} bytes; the limit is {upload_limit}")
        else:
            raise unsupported(kind, "application/octet-stream or multipart/form-data with the field 'file'")
        before = await store_call(state.store.latest)
        record = await store_call(lambda: state.store.put(data, check=check_serves(state.runtime)))
        created = not (record.name in before and before[record.name].version == record.version)
        return {"name": record.name, "version": record.version, "ref": record.ref, "created": created}

    @routes.delete("/v1/tuners/{name}", response_model=DeleteResponse, responses=ERRORS,
                   summary="Delete a tuner (all versions, or one with ?version=N)")
    async def delete_tuner(name: str, request: Request, version: int | None = Query(None, ge=1)):
        require_admin(request, state.settings.admin_token)
        deleted = await store_call(state.store.delete, name, version)
        return {"name": name, "deleted_versions": list(deleted)}

    return routes
