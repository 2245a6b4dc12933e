"""Reading request bodies within their limits and deadlines, and the content types the endpoints take."""
from __future__ import annotations

import asyncio
import json
import logging

from fastapi import Request

from server.http_errors import APIError

log = logging.getLogger(__name__)

# Multipart framing around one file, on top of the file's own limit.
MULTIPART_OVERHEAD = 64 * 1024


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


def unsupported(kind: str, accepted: str) -> APIError:
    return APIError(415, f"unsupported content type {kind or '(none)'!r}; send {accepted}")


class RequestDeadlines:
    """ASGI middleware: a request's body must arrive within `body_timeout_s` in all, with no gap longer than
    `body_idle_s` (else 408 and the connection is closed), and a request must be answered within
    `request_timeout_s` (else 503).

    A client that sends its body a byte a second holds only its own connection and a waiting coroutine: the
    batcher and the model thread see a request only once its body is complete and decoded. These deadlines make
    such a client let go, so that a crowd of them cannot pile up connections for hours.
    """

    def __init__(self, app, *, body_timeout_s: float, body_idle_s: float, request_timeout_s: float):
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.body_idle_s = body_idle_s
        self.request_timeout_s = request_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        body_deadline = loop.time() + self.body_timeout_s
        started = False

        async def timed_receive():
            left = body_deadline - loop.time()
            try:
                return await asyncio.wait_for(receive(), max(0.0, min(self.body_idle_s, left)))
            except asyncio.TimeoutError:
                what = "in all" if left <= self.body_idle_s else "between two parts of it"
                limit = self.body_timeout_s if left <= self.body_idle_s else self.body_idle_s
                raise APIError(408, f"the request body did not arrive in time (limit: {limit:g} s {what})",
                               headers={"Connection": "close"}) from None

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, timed_receive, tracked_send), self.request_timeout_s)
        except asyncio.TimeoutError:
            log.warning("%s %s not answered within %g s", scope.get("method"), scope.get("path"),
                        self.request_timeout_s)
            if started:
                raise
            body = json.dumps({"error": f"the request was not answered within {self.request_timeout_s:g} s; "
                                        "retry later"}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"2"),
                                    (b"connection", b"close"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
