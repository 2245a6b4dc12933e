"""Hot-loading frees what it replaces: a long-running server's memory must not grow with tuner churn."""
from __future__ import annotations


def test_tuner_churn_frees_old_snapshots(store_url, run_app, micro_backbone):
    """Each store change builds a new tuner snapshot; the replaced ones must be freed, or a soak's RSS would climb."""
    import asyncio
    import gc

    from restuning.bypass import ResTuningBypass
    from restuning.engine import MultiTaskEngine
    from tests.helpers import make_artifact, server_settings
    from tuner_store.artifact import encode_artifact

    def alive(cls) -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if issubclass(type(o), cls))  # type(): no proxy __class__ lookups

    async def main():
        async with run_app(server_settings(store_url)) as app:
            blobs = [encode_artifact(make_artifact(micro_backbone, "churn", seed=s)) for s in (1, 2)]
            octet = {"content-type": "application/octet-stream"}
            engines_before, heads_before = alive(MultiTaskEngine), alive(ResTuningBypass)
            for i in range(8):
                r = await app.client.post("/v1/tuners", content=blobs[i % 2], headers=octet)
                assert r.status_code == 201, r.text
                await app.wait_for(lambda: "churn" in app.state.registry.records("classification"))
                assert (await app.client.delete("/v1/tuners/churn")).status_code == 200
                await app.wait_for(lambda: "churn" not in app.state.registry.records("classification"))
            assert len(app.state.registry.records("classification")) == 3
            assert alive(MultiTaskEngine) <= engines_before
            assert alive(ResTuningBypass) <= heads_before

    asyncio.run(main())
