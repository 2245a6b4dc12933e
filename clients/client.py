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


def _image_bytes(image: bytes | str | Path) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    path = Path(image)
    if not path.is_file():
        raise RestuneError(f"image file {str(path)!r} does not exist")
    return path.read_bytes()


def _artifact_bytes(artifact: bytes | str | Path) -> bytes:
    if isinstance(artifact, (bytes, bytearray)):
        return bytes(artifact)
    path = Path(artifact)
    if not path.is_file():
        raise RestuneError(f"artifact file {str(path)!r} does not exist")
    return path.read_bytes()


def _classify_body(image, tasks, top_k) -> dict:
    body: dict[str, Any] = {"image": base64.b64encode(_image_bytes(image)).decode()}
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


class RestuneClient:
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

    def _request(self, method: str, path: str, **kw) -> Any:
        try:
            return _check(self._http.request(method, path, **kw))
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"cannot reach {self.base_url}: {exc}") from None

    def classify(self, image: bytes | str | Path, *, tasks: list[str] | None = None, top_k: int | None = None) -> dict:
        return self._request("POST", "/v1/classify", json=_classify_body(image, tasks, top_k))

    def generate(self, prompts: list[str], styles: list[str], **options) -> dict:
        body = {"prompts": prompts, "styles": styles, **{k: v for k, v in options.items() if v is not None}}
        return self._request("POST", "/v1/generate", json=body)

    def list_tuners(self) -> dict:
        return self._request("GET", "/v1/tuners")

    def get_tuner(self, name: str, version: int | None = None) -> dict:
        return self._request("GET", f"/v1/tuners/{name}", params={"version": version} if version else None)

    def push_tuner(self, artifact: bytes | str | Path) -> dict:
        return self._request("POST", "/v1/tuners", content=_artifact_bytes(artifact),
                             headers={"Content-Type": "application/octet-stream"})

    def delete_tuner(self, name: str, version: int | None = None) -> dict:
        return self._request("DELETE", f"/v1/tuners/{name}", params={"version": version} if version else None)

    def health(self) -> dict:
        return self._request("GET", "/healthz")

    def ready(self) -> dict:
        return self._request("GET", "/readyz")


class AsyncRestuneClient:
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

    async def _request(self, method: str, path: str, **kw) -> Any:
        try:
            return _check(await self._http.request(method, path, **kw))
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"cannot reach {self.base_url}: {exc}") from None

    async def classify(self, image: bytes | str | Path, *, tasks: list[str] | None = None,
                       top_k: int | None = None) -> dict:
        return await self._request("POST", "/v1/classify", json=_classify_body(image, tasks, top_k))

    async def generate(self, prompts: list[str], styles: list[str], **options) -> dict:
        body = {"prompts": prompts, "styles": styles, **{k: v for k, v in options.items() if v is not None}}
        return await self._request("POST", "/v1/generate", json=body)

    async def list_tuners(self) -> dict:
        return await self._request("GET", "/v1/tuners")

    async def get_tuner(self, name: str, version: int | None = None) -> dict:
        return await self._request("GET", f"/v1/tuners/{name}", params={"version": version} if version else None)

    async def push_tuner(self, artifact: bytes | str | Path) -> dict:
        return await self._request("POST", "/v1/tuners", content=_artifact_bytes(artifact),
                                   headers={"Content-Type": "application/octet-stream"})

    async def delete_tuner(self, name: str, version: int | None = None) -> dict:
        return await self._request("DELETE", f"/v1/tuners/{name}", params={"version": version} if version else None)

    async def health(self) -> dict:
        return await self._request("GET", "/healthz")

    async def ready(self) -> dict:
        return await self._request("GET", "/readyz")
