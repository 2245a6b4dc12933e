"""Python client for a restune server (httpx), sync and async.

    from clients.client import RestuneClient
    with RestuneClient("http://127.0.0.1:8000") as c:
        print(c.classify("cat.png", tasks=["digits"], top_k=3))
"""
from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import httpx

from restuning.errors import RestuneError

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


class ServerError(RestuneError):
    """The server answered with an error; `status` and `payload` hold what it said."""

    def __init__(self, status: int, payload: dict):
        self.status = status
        self.payload = payload
        super().__init__(f"server answered {status}: {payload.get('error', payload)}")


class ServerUnreachableError(RestuneError):
    pass


def _file_bytes(value: bytes | str | Path, what: str) -> bytes:
    """Bytes as given, or a file's content (`what` names the file in the error when it is missing)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    path = Path(value)
    if not path.is_file():
        raise RestuneError(f"{what} file {str(path)!r} does not exist")
    return path.read_bytes()


def _classify_body(image, tasks, top_k) -> dict:
    body: dict[str, Any] = {"image": base64.b64encode(_file_bytes(image, "image")).decode()}
    if tasks:
        body["tasks"] = list(tasks)
    if top_k is not None:
        body["top_k"] = top_k
    return body


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": response.text[:200]}
        raise ServerError(response.status_code, payload if isinstance(payload, dict) else {"error": payload})
    return response.json()


def _headers(admin_token: str | None) -> dict:
    token = admin_token if admin_token is not None else os.environ.get("RESTUNE_ADMIN_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Endpoints:
    """Every call of the HTTP API, written once: what to send. `_call` sends it, blocking (RestuneClient) or as
    a coroutine (AsyncRestuneClient), and returns the JSON answer or raises ServerError."""

    def _call(self, method: str, path: str, **kw) -> Any:
        raise NotImplementedError

    def classify(self, image: bytes | str | Path, *, tasks: list[str] | None = None, top_k: int | None = None):
        return self._call("POST", "/v1/classify", json=_classify_body(image, tasks, top_k))

    def generate(self, prompts: list[str], styles: list[str], **options):
        body = {"prompts": prompts, "styles": styles, **{k: v for k, v in options.items() if v is not None}}
        return self._call("POST", "/v1/generate", json=body)

    def list_tuners(self):
        return self._call("GET", "/v1/tuners")

    def get_tuner(self, name: str, version: int | None = None):
        return self._call("GET", f"/v1/tuners/{name}", params={"version": version} if version else None)

    def push_tuner(self, artifact: bytes | str | Path):
        return self._call("POST", "/v1/tuners", content=_file_bytes(artifact, "artifact"),
                          headers={"Content-Type": "application/octet-stream"})

    def delete_tuner(self, name: str, version: int | None = None):
        return self._call("DELETE", f"/v1/tuners/{name}", params={"version": version} if version else None)

    def health(self):
        return self._call("GET", "/healthz")

    def ready(self):
        return self._call("GET", "/readyz")


class RestuneClient(_Endpoints):
    def __init__(self, base_url: str = DEFAULT_SERVER_URL, *, admin_token: str | None = None, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=_headers(admin_token),
                                  transport=transport)

    def __enter__(self) -> "RestuneClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw) -> Any:
        try:
            return _check(self._http.request(method, path, **kw))
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"cannot reach {self.base_url}: {exc}") from None


class AsyncRestuneClient(_Endpoints):
    """The same calls as RestuneClient; each returns a coroutine to await."""

    def __init__(self, base_url: str = DEFAULT_SERVER_URL, *, admin_token: str | None = None, timeout: float = 120.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=_headers(admin_token),
                                       transport=transport)

    async def __aenter__(self) -> "AsyncRestuneClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kw) -> Any:
        try:
            return _check(await self._http.request(method, path, **kw))
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"cannot reach {self.base_url}: {exc}") from None
