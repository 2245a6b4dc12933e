"""The Python client, sync and async: the same calls, in-process against the real app."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from clients.client import AsyncRestuneClient, RestuneClient, ServerError
from tests.helpers import make_artifact, png_bytes, server_settings
from tuner_store.artifact import encode_artifact


def test_async_client_classifies_lists_pushes_and_deletes(store_url, run_app, micro_backbone):
    async def main():
        async with run_app(server_settings(store_url)) as app:
            transport = httpx.ASGITransport(app=app.app)
            async with AsyncRestuneClient("http://restune", transport=transport) as client:
                answer = await client.classify(png_bytes(1), tasks=["beta"], top_k=2)
                assert list(answer["results"]) == ["beta"] and len(answer["results"]["beta"]["labels"]) == 2
                listing = await client.list_tuners()
                assert [t["name"] for t in listing["tuners"]] == ["alpha", "beta", "gamma"]
                pushed = await client.push_tuner(encode_artifact(make_artifact(micro_backbone, "delta", seed=9)))
                assert pushed["ref"] == "delta@1" and pushed["created"] is True
                assert (await client.get_tuner("delta"))["version"] == 1
                assert (await client.delete_tuner("delta"))["deleted_versions"] == [1]
                with pytest.raises(ServerError) as error:
                    await client.get_tuner("delta")
                assert error.value.status == 404
                assert (await client.health())["status"] == "ok"

    asyncio.run(main())


def test_sync_client_is_the_same_calls():
    """Each call is written once (clients.client._Endpoints); the two clients only send differently."""
    calls = [n for n in vars(RestuneClient.__mro__[1]) if not n.startswith("_")]
    assert {"classify", "generate", "list_tuners", "get_tuner", "push_tuner", "delete_tuner", "health",
            "ready"} <= set(calls)
    for name in calls:
        assert name not in vars(RestuneClient) and name not in vars(AsyncRestuneClient)
