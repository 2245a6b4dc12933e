"""GET /healthz (alive), /readyz (ready to serve), /metrics (Prometheus text)."""
from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from server.http_errors import ErrorResponse
from server.kinds import SERVED_KINDS
from server.metrics import METRICS_CONTENT_TYPE
from server.state import ServerState

log = logging.getLogger(__name__)

READINESS_STORE_WAIT_S = 2.0  # below the readiness probe's timeoutSeconds in deploy/kubernetes


def router(state: ServerState) -> APIRouter:
    routes = APIRouter()

    @routes.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @routes.get("/readyz", summary="Ready for traffic: backbone loaded, tuners read from the store, not shutting down",
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
        registry = state.registry
        body = {
            "backbone": state.backbone.info.name if state.backbone else None,
            **{f"{kind}_tuners": len(registry.records(kind)) if registry else 0 for kind in SERVED_KINDS},
            "resident_tuners": len(registry.resident) if registry else 0,
            "host_tier_tuners": len(registry.host) if registry else 0,
            # the start-up warm-up: pinned then newest tuners made resident, then the host tier filled
            "warm_up": "done" if registry and registry.warm_up_done.is_set() else "running",
            "store_revision": registry.revision if registry else 0,
            "store": store,
        }
        if problems:
            return JSONResponse({"error": "; ".join(problems), **body}, status_code=503)
        return {"status": "ready", **body}

    @routes.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}}}})
    async def metrics():
        data, content_type = state.metrics.render()
        return Response(data, media_type=content_type)

    return routes
