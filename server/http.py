"""Reading request bodies within their limits, and the content types the endpoints take."""
from __future__ import annotations

from fastapi import Request

from server.http_errors import APIError

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
