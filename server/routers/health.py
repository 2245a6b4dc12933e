"""GET /healthz (alive), /readyz (ready to serve), /metrics (Prometheus text)."""
from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from server.http_errors import ErrorResponse
from server.kinds import SERVED_KINDS
from server.state import ServerState

log = logging.getLogger(__name__)


def router(state: ServerState) -> APIRouter:
    routes = APIRouter()

    @routes.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @routes.get("/readyz", summary="Backbone loaded and store reachable", responses={503: {"model": ErrorResponse}})
    async def readyz():
        problems = []
        if not state.ready or state.backbone is None:
            problems.append("backbone not loaded")
        try:
            await asyncio.to_thread(state.store.ping)
        except Exception as exc:
            log.warning("readiness: %s", exc)
            problems.append("tuner store unreachable (the server log says why)")
        snapshot = state.registry.snapshot if state.registry else None
        body = {
            "backbone": state.backbone.info.name if state.backbone else None,
            **{f"{kind}_tuners": len(snapshot.of_kind(kind)) if snapshot else 0 for kind in SERVED_KINDS},
            "store_revision": snapshot.revision if snapshot else 0,
        }
        if problems:
            return JSONResponse({"error": "; ".join(problems), **body}, status_code=503)
        return {"status": "ready", **body}

    @routes.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"content": {"text/plain; version=0.0.4": {}}}})
    async def metrics():
        data, content_type = state.metrics.render()
        return Response(data, media_type=content_type)

    return routes
