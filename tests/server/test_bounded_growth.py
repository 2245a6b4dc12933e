"""What a server keeps per tuner name, per request path and per task subset is bounded: tuners created and deleted
100,000 times leave no trace in memory, made-up paths and methods add no metrics series, and the engine's subset
cache keeps at most its size.

The registry, the serving runtime, the engine and the metrics here are the server's own; the store is a small
in-memory one (`MemoryStore`, below), because 100,000 fsync'ed file-store writes would take minutes: the stores'
own bounds (the change log trimmed and compacted) are tested in tests/tuner_store/test_retention.py.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import replace

import pytest
import torch

from restuning.engine import MultiTaskEngine
from server.kinds import ServingRuntime
from server.metrics import ServerMetrics
from server.registry import TunerRegistry
from tests.helpers import make_artifact
from tuner_store import NotFoundError, encode_artifact
from tuner_store.records import ChangeEvent, TunerRecord
from tuner_store.store import TunerStore, parse_version, pick_version

# 20,000 in the suite (about 15 s); RESTUNE_CHURN_CYCLES=100000 for the full count (docs/reliability.md)
CYCLES = int(os.environ.get("RESTUNE_CHURN_CYCLES", "20000"))


class MemoryStore(TunerStore):
    """A store in a dict, with the interface's semantics (versions never reused, a change log); it keeps only the
    live versions and the newest few changes, so that what grows in this test is the server's, not the store's."""

    url = "memory://test"

    def __init__(self):
        self._blobs: dict[tuple[str, int], bytes] = {}
        self._records: dict[tuple[str, int], TunerRecord] = {}
        self._high: dict[str, int] = {}  # only while a name has versions: a test store need not remember more
        self._events: list[ChangeEvent] = []
        self._revision = 0

    def _log(self, action: str, name: str, version: int | None) -> None:
        self._revision += 1
        self._events = [*self._events[-7:], ChangeEvent(self._revision, action, name, version)]

    def _put_validated(self, artifact, weights_sha, content):
        raise NotImplementedError("the test puts ready records (put_record)")

    def put_record(self, record: TunerRecord, blob: bytes) -> TunerRecord:
        version = self._high.get(record.name, 0) + 1
        self._high[record.name] = version
        stored = replace(record, version=version)
        self._records[(record.name, version)] = stored
        self._blobs[(record.name, version)] = blob
        self._log("put", record.name, version)
        return stored

    def delete(self, name, version=None):
        versions = sorted(v for n, v in self._records if n == name)
        if not versions:
            raise NotFoundError(name)
        for v in versions:
            del self._records[(name, v)], self._blobs[(name, v)]
        del self._high[name]
        self._log("delete", name, None)
        return versions

    def _resolve(self, name, version):
        return pick_version(name, sorted(v for n, v in self._records if n == name), parse_version(version), self.url)

    def get_bytes(self, name, version="latest"):
        return self._blobs[(name, self._resolve(name, version))]

    def record(self, name, version="latest"):
        return self._records[(name, self._resolve(name, version))]

    def list(self):
        return sorted(self._records.values(), key=lambda r: (r.name, r.version))

    def revision(self):
        return self._revision

    def changes(self, since_revision):
        return [e for e in self._events if e.revision > since_revision]

    def epoch(self):
        return "memory"

    def ping(self):
        pass


def _sizes(registry: TunerRegistry) -> dict:
    engine = registry.runtime.engine
    return {
        "records": len(registry._records), "by_kind": sum(len(v) for v in registry._by_kind.values()),
        "failures": len(registry.failures), "unloaded": len(registry.unloaded),
        "pinned": len(registry.resident.pinned), "resident": len(registry.resident), "host": len(registry.host),
        "loading": len(registry._loading), "waiting": len(registry._waiting),
        "engine_heads": len(engine), "subset_cache": len(engine._dense_cache),
        "metric_series": sum(len(m.samples) for m in registry.metrics.registry.collect()),
    }


@pytest.fixture(scope="module")
def tuner_blob(micro_backbone):
    artifact = make_artifact(micro_backbone, "churn", seed=3)
    blob = encode_artifact(artifact)
    from tuner_store import decode_artifact  # the record as a store makes it from the decoded config

    decoded = decode_artifact(blob)
    record = TunerRecord.from_config(decoded.config(weights_sha256="0" * 64), len(blob))
    return record, blob


def test_created_and_deleted_many_times_leaves_no_trace(micro_backbone, tuner_blob, caplog):
    """Every name is new (the worst case: whatever is kept per name would pile up), and a few in each hundred are
    unloaded, failed or pinned before they are deleted, and one in a thousand made resident, so that every per-name record the
    registry has is written and must be dropped again."""
    template, blob = tuner_blob
    # the registry logs each failed load; pytest's log capture would keep every one of those records
    caplog.set_level(logging.ERROR, logger="server.registry")
    store = MemoryStore()
    engine = MultiTaskEngine(micro_backbone)
    registry = TunerRegistry(store, ServingRuntime(micro_backbone, "cpu", torch.float32, engine=engine),
                             metrics=ServerMetrics(), resident_bytes=1 << 20)
    keep = store.put_record(replace(template, name="stays"), blob)
    registry.sync()
    registry.ensure("stays")

    def cycle(i: int) -> None:
        name = f"t{i}"
        store.put_record(replace(template, name=name), blob)
        registry.apply_change(name, store.revision())
        step = i % 4
        if i % 1000 == 999:  # made resident: installed in the engine's slots (a load takes milliseconds)
            registry.ensure(name)
        elif step == 1:
            registry.unload(name)  # the repository extension's unload
        elif i % 1000 == 998:
            registry.pin(name)  # pinned (and so made resident)
        elif step == 3:  # a version this replica could not load
            registry._failed(store.record(name), RuntimeError("cannot serve here"))
        store.delete(name)
        registry.apply_change(name, store.revision())

    for i in range(1_000):  # warm up: every container and cache reaches its working size
        cycle(i)
    gc.collect()
    sizes, blocks = _sizes(registry), sys.getallocatedblocks()
    for i in range(1_000, CYCLES):
        cycle(i)
    gc.collect()
    grown = sys.getallocatedblocks() - blocks
    assert _sizes(registry) == sizes
    assert registry.names() == ["stays"] and registry.resident.get("stays").version == keep.version
    # one Python object kept per cycle would be CYCLES - 1,000 blocks; allow for caches reaching their size
    assert grown < 1_000, f"{grown} more Python memory blocks after {CYCLES - 1_000} more cycles"
    print(f"{CYCLES - 1_000} create/delete cycles after warm-up: {grown:+d} Python memory blocks")


def test_the_subset_cache_keeps_its_size(micro_backbone, tuner_blob):
    """Requests name any subset of the tasks: the dense weights the engine builds per subset stay at most
    `subset_cache_size`, however many different subsets come."""
    from tuner_store import decode_artifact
    from tuner_store.kinds import build_tuner

    engine = MultiTaskEngine(micro_backbone, subset_cache_size=4)
    module = build_tuner(decode_artifact(tuner_blob[1]))
    names = [f"task{i}" for i in range(5)]
    for name in names:
        engine.put(name, module)
    images = torch.zeros((1, 3, *micro_backbone.info.image_size))
    subsets = [[a, b] for a in names for b in names if a < b]  # 10 different pairs
    for subset in subsets:
        assert sorted(engine.classify(images, subset)) == sorted(subset)
        assert len(engine._dense_cache) <= 4
    assert len(engine._dense_cache) == 4


def test_made_up_paths_and_methods_add_no_metrics_series(store_url, run_app):
    """Label values come from the routes and a fixed list of methods: 300 requests to paths nobody routes and with
    methods nobody knows leave the number of series as it was after the first few."""
    import asyncio

    from tests.helpers import server_settings

    async def main() -> tuple[int, int]:
        async with run_app(server_settings(store_url)) as app:
            def series() -> int:
                return sum(len(m.samples) for m in app.state.metrics.registry.collect())

            for i in range(3):
                await app.client.get(f"/no/such/path/{i}")
                await app.client.request("FROB", f"/v1/tuners/{i}")
            before = series()
            for i in range(3, 150):
                await app.client.get(f"/no/such/path/{i}")
                await app.client.request(f"FROB{i}", f"/v1/tuners/x{i}")
            return before, series()

    before, after = asyncio.run(main())
    assert after == before
