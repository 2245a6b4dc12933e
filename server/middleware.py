"""Request counts and latency per route template."""
from __future__ import annotations

import time

from server.http_errors import METHODS


class MetricsMiddleware:
    """As plain ASGI: Starlette's BaseHTTPMiddleware wraps every response in an extra task and stream, which
    costs more than the metrics themselves."""

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
            if method not in METHODS:  # a label value per made-up method would grow without bound
                method = "other"
            self.metrics.requests.labels(endpoint, method, str(status[0])).inc()
            self.metrics.latency.labels(endpoint, method).observe(time.perf_counter() - start)
