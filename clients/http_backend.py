"""The `restune tuners … --server URL` backend: the tuners commands, spoken over the HTTP API."""
from __future__ import annotations

from clients.client import RestuneClient, ServerError


def _record(data: dict):
    from tuner_store.store import TunerRecord

    return TunerRecord(
        name=data["name"], version=data["version"], kind=data["kind"], sha256=data["sha256"],
        size_bytes=data["size_bytes"], created_at=data["created_at"], backbone_name=data["backbone_name"],
        backbone_fingerprint=data["backbone_fingerprint"], num_labels=data["num_labels"], metrics=data["metrics"],
    )


def _translate(exc: ServerError) -> Exception:
    from tuner_store.errors import ArtifactError, NotFoundError, StoreError, StoreUnavailableError

    message = str(exc.payload.get("error", exc))
    if exc.status == 404:
        return NotFoundError(message)
    if exc.status == 503:
        return StoreUnavailableError(message)
    if exc.status == 400 and exc.payload.get("problems"):
        return ArtifactError(exc.payload["problems"])
    return StoreError(f"server answered {exc.status}: {message}")


class HTTPTunerBackend:
    """list/record/get_bytes/put/delete/close against a running server (writes use $RESTUNE_ADMIN_TOKEN)."""

    def __init__(self, url: str, *, admin_token: str | None = None):
        self.url = url.rstrip("/")
        self._client = RestuneClient(self.url, admin_token=admin_token)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ServerError as exc:
            raise _translate(exc) from None

    def list(self) -> list:
        data = self._call(self._client._request, "GET", "/v1/tuners", params={"all_versions": "true"})
        return [_record(t) for t in data["tuners"]]

    def record(self, name: str, version: int | str = "latest"):
        params = None if version in (None, "latest") else {"version": int(version)}
        return _record(self._call(self._client._request, "GET", f"/v1/tuners/{name}", params=params))

    def get_bytes(self, name: str, version: int | str = "latest") -> bytes:
        params = None if version in (None, "latest") else {"version": int(version)}
        try:
            response = self._client._http.get(f"/v1/tuners/{name}/artifact", params=params)
        except Exception as exc:
            from clients.client import ServerUnreachableError

            raise ServerUnreachableError(f"cannot reach {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise _translate(ServerError(response.status_code, response.json()))
        return response.content

    def put(self, artifact: bytes):
        data = self._call(self._client.push_tuner, artifact)
        return self.record(data["name"], data["version"])

    def delete(self, name: str, version: int | None = None) -> list[int]:
        return list(self._call(self._client.delete_tuner, name, version)["deleted_versions"])

    def close(self) -> None:
        self._client.close()
