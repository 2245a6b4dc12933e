"""Stores for the shared suite: every store test runs on a file store and on a real Redis."""
from __future__ import annotations

import pytest


@pytest.fixture(params=["file", "redis"])
def store_url(request, tmp_path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    return request.getfixturevalue("redis_url")


@pytest.fixture
def store(store_url):
    from tuner_store import open_store

    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture(scope="session")
def other_backbone_fingerprint() -> str:
    """Same architecture, other weights: the fingerprint must differ."""
    from restuning.backbones import create_backbone

    return create_backbone("restune_vit_micro", weights="random:1").fingerprint()
