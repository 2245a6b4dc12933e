"""The FastAPI application, assembled: one router per resource, the error handlers, CORS and metrics.

The HTTP layer validates and decodes; the batcher gathers requests; the runner does one backbone pass per
batch and all heads through the engine. Tuner writes go to the store; the registry's watcher hot-loads them
(here and on every other replica watching the same store).
"""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server.http import RequestDeadlines
from server.http_errors import install_error_handlers
from server.middleware import MetricsMiddleware
from server.routers import classify, console, generate, health, tuners, v2, v2_repository
from server.settings import ServerSettings
from server.state import ServerState


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
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(RequestDeadlines, body_timeout_s=settings.body_timeout_s, body_idle_s=settings.body_idle_s,
                       request_timeout_s=settings.request_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    for resource in (classify, generate, tuners, health, v2, v2_repository, console):
        app.include_router(resource.router(state))
    return app
