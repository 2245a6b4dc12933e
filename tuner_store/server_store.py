"""A running restune server as a tuner store: http(s)://host:port, spoken over its /v1/tuners API.

`restune tuners … --server URL`, `train classify --push http://…` and the Python client's tuner methods all
go through this one backend. It reads and writes like a store, but it cannot be watched: a server replica
must be pointed at the store itself (file:// or redis://), not at another server. Writes send
`Authorization: Bearer $RESTUNE_ADMIN_TOKEN` when that variable (or `admin_token`) is set.
"""
from __future__ import annotations

import os

import httpx

from tuner_store.artifact import decode_artifact, encode_artifact
from tuner_store.errors import ArtifactError, NotFoundError, StoreError, StoreUnavailableError
from tuner_store.records import TunerRecord

TOKEN_ENV = "RESTUNE_ADMIN_TOKEN"


def is_server_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def error_from_response(response: httpx.Response, what: str) -> StoreError:
    """The store error a server's error answer stands for (its JSON `error`, `problems` kept)."""
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": response.text[:500]}
    if not isinstance(payload, dict):
        payload = {"error": str(payload)[:500]}
    message = str(payload.get("error", payload))
    status = response.status_code
    if status == 404:
        return NotFoundError(message)
    if status == 503:
        return StoreUnavailableError(f"{what}: {message}")
    if status == 400 and payload.get("problems"):
        return ArtifactError(payload["problems"])
    hint = f" (set {TOKEN_ENV})" if status in (401, 403) and not os.environ.get(TOKEN_ENV) else ""
    return StoreError(f"{what} answered HTTP {status}: {message}{hint}")


class ServerTunerStore:
    """list / latest / record / get_bytes / get / put / delete against a restune server."""

    def __init__(self, url: str, *, admin_token: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        token = admin_token if admin_token is not None else os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers, transport=transport)

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise StoreUnavailableError(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise error_from_response(response, f"{self.url}{path}")
        return response

    @staticmethod
    def _version(version: int | str | None) -> dict | None:
        return None if version in (None, "latest") else {"version": int(version)}

    def _pages(self, **params) -> list[dict]:
        """Every entry of the paginated listing, following its cursors."""
        entries, cursor = [], None
        while True:
            page = self._send("GET", "/v1/tuners", params={**params, **({"cursor": cursor} if cursor else {})}).json()
            entries += page["tuners"]
            cursor = page.get("next_cursor")
            if not cursor:
                return entries

    def list(self) -> list[TunerRecord]:
        return [TunerRecord.from_json(t) for t in self._pages(all_versions="true")]

    def latest(self) -> dict[str, TunerRecord]:
        return {t["name"]: TunerRecord.from_json(t) for t in self._pages()}

    def revision(self) -> int:
        return int(self._send("GET", "/v1/tuners", params={"limit": 1}).json()["store_revision"])

    def record(self, name: str, version: int | str = "latest") -> TunerRecord:
        return TunerRecord.from_json(self._send("GET", f"/v1/tuners/{name}", params=self._version(version)).json())

    def get_bytes(self, name: str, version: int | str = "latest") -> bytes:
        return self._send("GET", f"/v1/tuners/{name}/artifact", params=self._version(version)).content

    def get(self, name: str, version: int | str = "latest"):
        return decode_artifact(self.get_bytes(name, version), max_bytes=None)

    def put(self, artifact) -> TunerRecord:
        """Upload an artifact (a TunerArtifact or its file's bytes); the server validates it and assigns the version."""
        if not isinstance(artifact, (bytes, bytearray, memoryview)):
            artifact = encode_artifact(artifact)
        answer = self._send("POST", "/v1/tuners", content=bytes(artifact),
                            headers={"Content-Type": "application/octet-stream"}).json()
        return self.record(answer["name"], answer["version"])

    def delete(self, name: str, version: int | None = None) -> list[int]:
        return list(self._send("DELETE", f"/v1/tuners/{name}", params=self._version(version)).json()["deleted_versions"])

    def ping(self) -> None:
        self._send("GET", "/healthz")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ServerTunerStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerTunerStore({self.url!r})"
