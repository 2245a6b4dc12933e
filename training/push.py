"""Pushing a trained tuner: to a running server (http/https) or straight into a tuner store (file://, redis://)."""
from __future__ import annotations

import os

from restuning.errors import RestuneError


class PushError(RestuneError):
    """A push failed; the message says where the artifact file is so nothing is lost."""


def is_server_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def check_target(target: str) -> None:
    """Fail before training on a push target that can never work (an unknown scheme, an empty URL)."""
    if is_server_url(target):
        return
    from tuner_store.store import open_store

    open_store(target).close()  # parses the URL; connects or creates nothing


def push_bytes_to_server(url: str, data: bytes, *, timeout: float = 60.0) -> str:
    """POST the artifact to {url}/v1/tuners (octet-stream), with $RESTUNE_ADMIN_TOKEN as a bearer token if set."""
    import httpx

    headers = {"Content-Type": "application/octet-stream"}
    token = os.environ.get("RESTUNE_ADMIN_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    endpoint = url.rstrip("/") + "/v1/tuners"
    try:
        response = httpx.post(endpoint, content=data, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise PushError(f"could not reach {endpoint}: {type(exc).__name__}: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text
        hint = " (set RESTUNE_ADMIN_TOKEN)" if response.status_code in (401, 403) and not token else ""
        raise PushError(f"{endpoint} refused the tuner: HTTP {response.status_code}: {str(detail)[:500]}{hint}")
    try:
        body = response.json()
        return body.get("ref") or f"{body['name']}@{body['version']}"
    except (ValueError, KeyError, AttributeError):
        raise PushError(f"{endpoint} answered HTTP {response.status_code} without a name@version") from None


def push_artifact(artifact, target: str, *, artifact_path: str | None = None) -> str:
    """Push a TunerArtifact; returns 'name@version'. On failure the error names the saved file to retry with."""
    from tuner_store.artifact import encode_artifact
    from tuner_store.store import open_store

    retry = (f"; the artifact is saved at {artifact_path}, push it later with "
             f"`restune tuners push {artifact_path}`" if artifact_path else "")
    try:
        if is_server_url(target):
            return push_bytes_to_server(target, encode_artifact(artifact))
        with open_store(target) as store:
            return store.put(artifact).ref
    except RestuneError as exc:
        raise PushError(f"push to {target} failed: {exc}{retry}") from None
