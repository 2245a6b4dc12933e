"""Fixtures for server tests: a file store holding tiny tuners, and the app running in-process."""
from __future__ import annotations

import pytest

from tests.helpers import RunningApp, make_artifact


@pytest.fixture
def store_url(tmp_path, micro_backbone):
    from tuner_store.urls import open_store

    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    for i, name in enumerate(["alpha", "beta", "gamma"]):
        store.put(make_artifact(micro_backbone, name, num_classes=3 + i, seed=i))
    store.close()
    return url


@pytest.fixture
def run_app():
    """Use as: async with run_app(settings) as running: await running.client.get(...)."""
    from contextlib import asynccontextmanager

    from server.app import create_app

    @asynccontextmanager
    async def _run(settings):
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            running = RunningApp(app)
            try:
                yield running
            finally:
                await running.client.aclose()

    return _run
