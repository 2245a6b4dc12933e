"""One suite, two backends: every test runs on a file store and on a real redis-server."""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from tests.tuner_store.tuner_helpers import BAD_INPUT_IDS, bad_inputs, make_artifact
from tuner_store import (
    ArtifactError,
    ChangeEvent,
    NotFoundError,
    StoreError,
    StoreResetError,
    StoreUnavailableError,
    build_tuner,
    open_store,
)
from tuner_store.file_store import FileTunerStore


def _events(store, since=0):
    return [(e.revision, e.action, e.ref) for e in store.changes(since)]


def test_round_trip(store, micro_backbone):
    artifact = make_artifact(micro_backbone, seed=1)
    record = store.put(artifact)
    assert (record.name, record.version, record.kind, record.num_labels) == ("digits", 1, "classification", 3)
    assert record.sha256 == artifact.weights_sha256
    assert record.backbone_fingerprint == micro_backbone.fingerprint()
    assert record.metrics == artifact.metrics and record.created_at == artifact.created_at

    got = store.get("digits")
    assert got.version == 1
    assert (got.labels, got.tuner, got.backbone, got.metrics) == (
        artifact.labels, artifact.tuner, artifact.backbone, artifact.metrics)
    assert all(torch.equal(got.tensors[k], v) for k, v in artifact.tensors.items())
    assert len(store.get_bytes("digits", 1)) == record.size_bytes
    assert store.record("digits") == record

    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    features = micro_backbone.forward_features(images)
    original = build_tuner(artifact)
    assert torch.equal(build_tuner(got)(features, micro_backbone), original(features, micro_backbone))


def test_versioning(store, micro_backbone):
    artifacts = [make_artifact(micro_backbone, seed=s) for s in range(3)]
    assert [store.put(a).version for a in artifacts] == [1, 2, 3]
    assert store.get("digits").version == 3
    for version, artifact in enumerate(artifacts, start=1):
        assert store.get("digits", version).weights_sha256 == artifact.weights_sha256
        assert store.record("digits", str(version)).sha256 == artifact.weights_sha256
    assert store.get("digits", "latest").weights_sha256 == artifacts[-1].weights_sha256
    with pytest.raises(NotFoundError, match=r"no version 4; versions: \[1, 2, 3\]"):
        store.get("digits", 4)
    with pytest.raises(NotFoundError, match="no tuner named 'shapes'"):
        store.record("shapes")
    with pytest.raises(NotFoundError, match="tuner names are"):
        store.get_bytes("../digits")
    with pytest.raises(NotFoundError, match="positive integers or 'latest'"):
        store.get("digits", "newest")


def test_idempotent_put(store, micro_backbone):
    artifact = make_artifact(micro_backbone)
    first = store.put(artifact)
    assert store.put(artifact) == first
    # Same content, another creation time and a stale version number: still the same version.
    assert store.put(replace(artifact, created_at="2030-01-01T00:00:00Z", version=7)) == first
    assert store.put(store.get_bytes("digits", 1)) == first
    assert store.revision() == 1 and len(store.list()) == 1
    # Different metrics are different content.
    assert store.put(replace(artifact, metrics={"val_acc": 0.9})).version == 2
    assert store.revision() == 2


def test_delete(store, micro_backbone):
    for seed in range(3):
        store.put(make_artifact(micro_backbone, seed=seed))
    store.put(make_artifact(micro_backbone, "shapes", seed=9))
    assert store.delete("digits", 2) == [2]
    assert [r.version for r in store.list() if r.name == "digits"] == [1, 3]
    with pytest.raises(NotFoundError, match=r"no version 2; versions: \[1, 3\]"):
        store.get("digits", 2)
    with pytest.raises(NotFoundError):
        store.delete("digits", 2)
    assert store.delete("digits") == [1, 3]
    with pytest.raises(NotFoundError, match="no tuner named 'digits'"):
        store.delete("digits")
    with pytest.raises(NotFoundError, match="not 'latest'"):
        store.delete("shapes", "latest")
    assert [r.ref for r in store.list()] == ["shapes@1"]
    # Versions are never reused, and content deleted earlier can come back as a new version.
    assert store.put(make_artifact(micro_backbone, seed=0)).version == 4
    assert _events(store)[4:] == [(5, "delete", "digits@2"), (6, "delete", "digits"), (7, "put", "digits@4")]


def test_list_and_latest(store, micro_backbone):
    assert store.list() == [] and store.latest() == {} and store.revision() == 0
    puts = [("shapes", 0), ("digits", 1), ("shapes", 2), ("alpha", 3), ("digits", 4)]
    for name, seed in puts:
        store.put(make_artifact(micro_backbone, name, seed=seed))
    assert [r.ref for r in store.list()] == ["alpha@1", "digits@1", "digits@2", "shapes@1", "shapes@2"]
    latest = store.latest()
    assert {k: v.version for k, v in latest.items()} == {"alpha": 1, "digits": 2, "shapes": 2}
    assert latest["shapes"] == store.record("shapes", 2)
    # A second handle on the same store (another replica) sees the same thing.
    other = open_store(store.url if not isinstance(store, FileTunerStore) else str(store.root))
    try:
        assert other.list() == store.list()
    finally:
        other.close()


async def _collect(store, since: int, count: int, timeout: float = 20.0) -> list[ChangeEvent]:
    events: list[ChangeEvent] = []

    async def run():
        async with contextlib.aclosing(store.watch(since, poll_interval=0.02)) as stream:
            async for event in stream:
                events.append(event)
                if len(events) == count:
                    return

    await asyncio.wait_for(run(), timeout)
    return events


def test_watch_and_resume(store, store_url, micro_backbone):
    replica = open_store(store_url)  # a separate handle, as another server replica would have
    try:
        store.put(make_artifact(micro_backbone, seed=0))
        store.put(make_artifact(micro_backbone, seed=1))
        caught_up = asyncio.run(_collect(replica, 0, 2))
        assert [(e.revision, e.action, e.ref) for e in caught_up] == [(1, "put", "digits@1"), (2, "put", "digits@2")]

        async def live():
            watcher = asyncio.create_task(_collect(replica, 2, 2))
            await asyncio.sleep(0.1)  # the watcher is waiting before the changes happen
            await asyncio.to_thread(store.put, make_artifact(micro_backbone, "shapes", seed=2))
            await asyncio.to_thread(store.delete, "digits", 1)
            return await watcher

        assert [(e.revision, e.action, e.ref) for e in asyncio.run(live())] == [
            (3, "put", "shapes@1"), (4, "delete", "digits@1")]

        # While the replica is away: two more changes. Resuming from its last revision misses none.
        store.delete("shapes")
        store.put(make_artifact(micro_backbone, seed=3))
        resumed = asyncio.run(_collect(replica, 4, 2))
        assert resumed == [ChangeEvent(5, "delete", "shapes", None), ChangeEvent(6, "put", "digits", 3)]
        assert replica.changes(4) == resumed and replica.revision() == 6
        assert replica.changes(6) == []
    finally:
        replica.close()


def test_watch_from_beyond_the_log_is_a_reset(store, micro_backbone):
    store.put(make_artifact(micro_backbone))
    with pytest.raises(StoreResetError, match="resynchronise from revision 0"):
        asyncio.run(_collect(store, 5, 1))


def test_redis_restart_without_data_is_a_reset_for_watchers(redis_url, micro_backbone):
    """A watcher at revision 2 whose Redis comes back empty must not wait forever for revision 3."""
    import redis

    store = open_store(redis_url)
    store.put(make_artifact(micro_backbone, seed=0))
    store.put(make_artifact(micro_backbone, seed=1))

    async def run():
        watcher = asyncio.create_task(_collect(store, 2, 1))
        await asyncio.sleep(0.1)
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        client.close()
        return await watcher

    with pytest.raises(StoreResetError, match="at revision 0, behind revision 2"):
        asyncio.run(run())
    store.close()


@pytest.mark.parametrize("case", BAD_INPUT_IDS)
def test_bad_input_is_refused_and_nothing_changes(case, store, store_url, micro_backbone,
                                                  other_backbone_fingerprint, tmp_path):
    good = make_artifact(micro_backbone)
    store.put(good)
    bad = bad_inputs(good, other_backbone_fingerprint)[case]
    before = (store.list(), store.revision(), store.get_bytes("digits", 1))
    files_before = sorted(p for p in tmp_path.rglob("*"))
    target = open_store(store_url, max_artifact_bytes=bad.max_bytes) if bad.max_bytes else store
    try:
        with pytest.raises(ArtifactError) as info:
            target.put(bad.data, **bad.put_kwargs)
    finally:
        if target is not store:
            target.close()
    assert bad.message in str(info.value)
    assert (store.list(), store.revision(), store.get_bytes("digits", 1)) == before
    assert sorted(p for p in tmp_path.rglob("*")) == files_before  # no file written, not even outside the store


def test_put_refuses_what_is_not_an_artifact(store):
    with pytest.raises(ArtifactError, match="takes a TunerArtifact or bytes"):
        store.put({"name": "digits"})
    assert store.revision() == 0


def test_unreachable_redis_is_a_clear_error(micro_backbone):
    from tests.helpers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    store = open_store(url)
    for call in (store.ping, store.list, store.revision, lambda: store.put(make_artifact(micro_backbone))):
        with pytest.raises(StoreUnavailableError) as info:
            call()
        assert "unreachable" in str(info.value) and url in str(info.value)
    store.close()


def test_redis_url_password_is_not_echoed():
    store = open_store("redis://:s3cret@127.0.0.1:1/0")
    with pytest.raises(StoreUnavailableError) as info:
        store.ping()
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


def test_file_store_on_a_path_that_is_a_file(tmp_path, micro_backbone):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    store = open_store(f"file://{blocker}")
    with pytest.raises(StoreUnavailableError, match="not a directory"):
        store.ping()
    with pytest.raises(StoreUnavailableError):
        store.put(make_artifact(micro_backbone))


def test_package_import_is_light():
    """Importing the store loads neither redis nor torch: `restune tuners list` stays fast."""
    code = (
        "import sys, tuner_store, tuner_store.commands, tuner_store.file_store, tuner_store.redis_store\n"
        "heavy = [m for m in ('redis', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_open_store_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_store().url == f"file://{tmp_path / 'data' / 'tuners'}"
    assert not (tmp_path / "data").exists()  # opening creates nothing; the first put does
    assert open_store(f"file://{tmp_path}/abs").url == f"file://{tmp_path}/abs"
    assert open_store("file://rel/dir").url == f"file://{tmp_path}/rel/dir"
    assert open_store("plain/dir").url == f"file://{tmp_path}/plain/dir"
    redis_store = open_store("redis://127.0.0.1:1/3?prefix=team")
    assert redis_store.prefix == "team"
    with pytest.raises(StoreError, match=r"unknown store URL scheme 's3://'.*redis://host:port/db"):
        open_store("s3://bucket/tuners")
    with pytest.raises(StoreError, match="names no directory"):
        open_store("file://")
