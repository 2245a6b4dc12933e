"""Pushing a trained tuner to any store URL: file://, redis://, or a running server's http(s)://."""
from __future__ import annotations

from restuning.errors import RestuneError
from tuner_store.urls import open_store


class PushError(RestuneError):
    """A push failed; the message says where the artifact file is so nothing is lost."""


def check_target(target: str) -> None:
    """Fail before training on a push target that can never work (an unknown scheme, an empty URL)."""
    open_store(target).close()  # parses the URL; connects or creates nothing


def push_artifact(artifact, target: str, *, artifact_path: str | None = None) -> str:
    """Push a TunerArtifact; returns 'name@version'. On failure the error names the saved file to retry with."""
    retry = (f"; the artifact is saved at {artifact_path}, push it later with "
             f"`restune tuners push {artifact_path}`" if artifact_path else "")
    try:
        with open_store(target) as store:
            return store.put(artifact).ref
    except RestuneError as exc:
        raise PushError(f"push to {target} failed: {exc}{retry}") from None
