"""Thousands of tuners: a resident set under a byte budget (LRU, pins, leases), loads on demand that happen once,
slots that no batch sees half-written, a default task set, and a listing that pages stably."""
from __future__ import annotations

import asyncio
import base64
import random
import threading
import time

import pytest
import torch

from restuning.bypass import BypassConfig, build_bypass
from restuning.engine import MultiTaskEngine
from tests.helpers import make_artifact, png_bytes, server_settings
from tuner_store.urls import open_store


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _fill(url: str, backbone, names: list[str]) -> None:
    store = open_store(url)
    for i, name in enumerate(names):
        store.put(make_artifact(backbone, name, num_classes=3, seed=i))
    store.close()


def _slot_mib(backbone) -> float:
    """What one test tuner takes in the engine, in MiB."""
    engine = MultiTaskEngine(backbone)
    config = BypassConfig.create(backbone.info, num_classes=3, dim=4)
    engine.put("x", build_bypass(config, backbone.embed_dim, seed=0))
    return engine.slot_bytes("x") / (1024 * 1024)


# -- the engine's slots --------------------------------------------------------------------------------------


def test_no_batch_sees_a_half_written_slot(micro_backbone):
    """Writers replace and evict heads in a loop (slots are reused) while readers run routed batches: every
    result equals the output of the exact version its tag names, so no batch read a slot mid-write."""
    bb = micro_backbone
    config = BypassConfig.create(bb.info, num_classes=3, dim=4)
    versions = {(name, v): build_bypass(config, bb.embed_dim, seed=100 * i + v)
                for i, name in enumerate("abcdef") for v in range(4)}
    feats = bb.forward_features(torch.randn(3, 3, 32, 32))
    expected = {key: head(feats, bb) for key, head in versions.items()}
    engine = MultiTaskEngine(bb, {n: versions[(n, 0)] for n in "abcdef"}, kernel_backend="torch", initial_capacity=2)
    stop, problems, checked = threading.Event(), [], [0]

    def write():
        rng = random.Random(0)
        while not stop.is_set():
            name, v = rng.choice("abcdef"), rng.randrange(4)
            if rng.random() < 0.2 and len(engine) > 3:
                engine.remove(name)
            else:
                engine.put(name, versions[(name, v)], tag=(name, v))

    def read(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            names = engine.names
            tasks = [rng.sample(names, k=min(2, len(names))) for _ in range(3)]
            try:
                out = engine.run_routed(feats, tasks, tags=True)
            except Exception:  # a head removed between picking and running: the engine says so; not a slot issue
                continue
            for i, results in enumerate(out):
                for name, (logits, tag) in results.items():
                    if tag is None:
                        continue  # still the constructor's version 0, untagged
                    if not torch.allclose(logits, expected[tag][i], atol=1e-5):
                        problems.append((tag, i))
                    checked[0] += 1

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()
    assert problems == [] and checked[0] > 50


def test_a_batch_finishes_on_the_version_it_started_with(micro_backbone):
    bb = micro_backbone
    config = BypassConfig.create(bb.info, num_classes=3, dim=4)
    old, new = build_bypass(config, bb.embed_dim, seed=1), build_bypass(config, bb.embed_dim, seed=2)
    engine = MultiTaskEngine(bb, kernel_backend="torch", initial_capacity=1)
    engine.put("t", old, tag="t@1")
    feats = bb.forward_features(torch.randn(2, 3, 32, 32))
    with engine.reading() as read:
        (tensors, placement), = read.resolve(["t"])
        engine.put("t", new, tag="t@2")  # replaced while the batch holds the old slot
        engine.remove("t")
        engine.put("u", new, tag="u@1")  # and a new head arrives: it must not take the old slot
        assert engine._where["u"].slot != placement.slot
        from restuning.kernels import reference

        logits = reference.routed_group_logits([f[:, :1] for f in feats], torch.tensor([0, 1]),
                                               torch.tensor([placement.slot] * 2), tensors, bb)
    assert placement.tag == "t@1"
    torch.testing.assert_close(logits[:, :3], old(feats, bb))


def test_hot_load_writes_one_slot(micro_backbone):
    """A put costs one slot however many heads there are (capacity doubles; nothing is repacked)."""
    bb = micro_backbone
    config = BypassConfig.create(bb.info, num_classes=3, dim=4)
    engine = MultiTaskEngine(bb, kernel_backend="torch", initial_capacity=2)
    for i in range(60):
        engine.put(f"t{i}", build_bypass(config, bb.embed_dim, seed=i))
    group, = engine.groups
    assert group.tensors.capacity == 64 and group.used == 60
    before = group.tensors.up_b.clone()
    engine.put("t7", build_bypass(config, bb.embed_dim, seed=999))
    changed = (group.tensors.up_b != before).any(dim=(0, 2)).nonzero().flatten().tolist()
    assert len(changed) == 1 and changed[0] != engine._where["t6"].slot  # one slot written, the new one


# -- the server: residency, misses, pins, defaults ------------------------------------------------------------


def test_budget_evicts_lru_and_serves_every_request(tmp_path, run_app, micro_backbone):
    """A resident set that holds three of ten tuners, under a stream of requests naming random ones."""
    url = f"file://{tmp_path / 'store'}"
    names = [f"t{i}" for i in range(10)]
    _fill(url, micro_backbone, names)
    budget = 3.5 * _slot_mib(micro_backbone)

    async def main():
        async with run_app(server_settings(url, resident_mb=budget, host_cache_mb=0, feature_cache_mb=0)) as app:
            registry = app.state.registry
            rng = random.Random(1)

            async def one(i):
                tasks = rng.sample(names, 2)
                r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(i % 4)), "tasks": tasks})
                return r.status_code, tasks, r.json()

            answers = await asyncio.gather(*(one(i) for i in range(40)))
            assert [a[0] for a in answers] == [200] * 40, [a for a in answers if a[0] != 200][:2]
            for _, tasks, body in answers:
                assert list(body["results"]) == tasks
            assert len(registry.resident) <= 3 and registry.resident.nbytes <= budget * 1024 * 1024
            metrics = (await app.client.get("/metrics")).text
            assert "restune_tuner_evictions_total" in metrics and "restune_tuner_misses_total" in metrics
            evictions = float(next(line.split()[-1] for line in metrics.splitlines()
                                   if line.startswith("restune_tuner_evictions_total")))
            assert evictions > 0

    asyncio.run(main())


def test_concurrent_misses_load_a_tuner_once(tmp_path, run_app, micro_backbone):
    url = f"file://{tmp_path / 'store'}"
    _fill(url, micro_backbone, ["alpha", "beta"])

    async def main():
        async with run_app(server_settings(url)) as app:
            registry = app.state.registry
            await app.wait_for(lambda: len(registry.resident) == 2)  # the start-up warm-up is done
            for tuner in registry.resident.items():
                registry._evict(tuner.name)  # cold: nothing resident
            loads = []
            real = registry._load

            def counting(record, deadline=None):
                loads.append(record.name)
                time.sleep(0.2)  # a slow store: the other requests arrive while it loads
                return real(record, deadline)

            registry._load = counting
            rs = await asyncio.gather(*(app.client.post("/v1/classify", json={"image": b64(png_bytes(i)),
                                                                              "tasks": ["alpha"]}) for i in range(6)))
            assert [r.status_code for r in rs] == [200] * 6
            assert loads == ["alpha"]

    asyncio.run(main())


def test_a_miss_past_its_deadline_is_503_with_retry_after(tmp_path, run_app, micro_backbone):
    url = f"file://{tmp_path / 'store'}"
    _fill(url, micro_backbone, ["alpha"])

    async def main():
        async with run_app(server_settings(url, miss_timeout_s=0.2)) as app:
            registry = app.state.registry
            await app.wait_for(lambda: "alpha" in registry.resident)  # the start-up warm-up is done
            registry._evict("alpha")
            real = registry._load

            def slow(record, deadline=None):
                time.sleep(1.0)
                return real(record, deadline)

            registry._load = slow
            r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(1)), "tasks": ["alpha"]})
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and "took longer than" in r.json()["error"]
            await app.wait_for(lambda: "alpha" in registry.resident, timeout=5)  # the load went on
            r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(1)), "tasks": ["alpha"]})
            assert r.status_code == 200

    asyncio.run(main())


def test_an_evicted_tuner_comes_back_from_the_host_tier_without_the_store(tmp_path, run_app, micro_backbone,
                                                                          monkeypatch):
    """Evicted for room, a head's packed slot waits in the host cache: its next miss copies it back (no store
    read, no build) and answers exactly as before; with the host cache off it is fetched and built again."""
    import server.registry as registry_module

    url = f"file://{tmp_path / 'store'}"
    names = [f"t{i}" for i in range(4)]
    _fill(url, micro_backbone, names)
    builds = []
    real_build = registry_module.build_tuner
    monkeypatch.setattr(registry_module, "build_tuner", lambda artifact: builds.append(artifact.name)
                        or real_build(artifact))

    async def main(host_cache_mb):
        settings = server_settings(url, resident_mb=2.5 * _slot_mib(micro_backbone), host_cache_mb=host_cache_mb,
                                   feature_cache_mb=0)
        async with run_app(settings) as app:
            registry = app.state.registry
            await app.wait_for(lambda: len(registry.resident) == 2)

            async def ask(name):
                r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(3)), "tasks": [name]})
                assert r.status_code == 200, r.text
                return r.json()["results"][name]

            first = {name: await ask(name) for name in names}  # every one loaded at least once, most evicted
            builds.clear()
            reads = []
            real_read = registry.store.get_bytes
            registry.store.get_bytes = lambda *a, **k: reads.append(a) or real_read(*a, **k)
            again = {name: await ask(name) for name in names}
            assert again == first
            return builds, reads

    builds_on, reads_on = asyncio.run(main(host_cache_mb=64))
    assert builds_on == [] and reads_on == []
    builds_off, reads_off = asyncio.run(main(host_cache_mb=0))
    assert len(builds_off) >= 2 and len(reads_off) == len(builds_off)


@pytest.mark.parametrize("change", ["unload", "delete"])
def test_a_tuner_unloaded_or_deleted_while_it_loads_does_not_stay_resident(tmp_path, micro_backbone, change):
    from server.kinds import ServingRuntime
    from server.registry import TunerRegistry

    url = f"file://{tmp_path / 'store'}"
    _fill(url, micro_backbone, ["alpha"])
    engine = MultiTaskEngine(micro_backbone)
    store = open_store(url)
    registry = TunerRegistry(store, ServingRuntime(micro_backbone, "cpu", torch.float32, engine=engine))
    registry.sync()
    entered, release = threading.Event(), threading.Event()
    real_put = engine.put

    def slow_put(*args, **kwargs):
        entered.set()
        release.wait(timeout=10)
        return real_put(*args, **kwargs)

    engine.put = slow_put
    loading = threading.Thread(target=lambda: registry.ensure("alpha"))
    loading.start()
    assert entered.wait(timeout=10)
    if change == "unload":
        registry.unload("alpha")
    else:
        store.delete("alpha")
        registry.apply_change("alpha", store.revision())
    release.set()
    loading.join(timeout=10)
    assert "alpha" not in registry.resident and "alpha" not in engine
    store.close()


def _alpha_and_gamma_resident_beta_not(tmp_path, micro_backbone):
    """A registry whose budget holds two of three heads, with alpha then gamma loaded: (store, engine, registry)."""
    from server.kinds import ServingRuntime
    from server.registry import TunerRegistry

    url = f"file://{tmp_path / 'store'}"
    _fill(url, micro_backbone, ["alpha", "gamma", "beta"])
    store = open_store(url)
    engine = MultiTaskEngine(micro_backbone)
    registry = TunerRegistry(store, ServingRuntime(micro_backbone, "cpu", torch.float32, engine=engine),
                             resident_bytes=int(2.5 * _slot_mib(micro_backbone) * 1024 * 1024),
                             host_cache_bytes=64 * 1024 * 1024)
    registry.sync()
    registry.ensure("alpha")
    registry.ensure("gamma")
    return store, engine, registry


def test_an_eviction_does_not_take_out_a_tuner_loaded_again_meanwhile(tmp_path, micro_backbone):
    """A load that evicts alpha, and a request that loads alpha again before that eviction has taken it out of the
    engine: alpha stays placed and resident (before, it stayed resident but left the engine, and the next request
    or eviction naming it failed: a 404, and a 500 with KeyError in the engine's export)."""
    store, engine, registry = _alpha_and_gamma_resident_beta_not(tmp_path, micro_backbone)
    chosen, go_on = threading.Event(), threading.Event()
    real_room_for = registry.resident.room_for
    evicting = {}

    def room_for(*args, **kwargs):
        gone = real_room_for(*args, **kwargs)
        if threading.current_thread() is evicting.get("thread") and not chosen.is_set():
            chosen.set()
            go_on.wait(timeout=10)  # alpha is out of the resident set, not yet out of the engine
        return gone

    registry.resident.room_for = room_for
    evicting["thread"] = threading.Thread(target=lambda: registry.ensure("beta"))
    evicting["thread"].start()
    assert chosen.wait(timeout=10) and "alpha" not in registry.resident
    registry.ensure("alpha")  # loaded again (evicting gamma for room) while beta's eviction of alpha waits
    go_on.set()
    evicting["thread"].join(timeout=10)
    resident = {t.name for t in registry.resident.items()}
    assert {"alpha", "beta"} <= resident
    assert resident <= set(engine.names), (resident, engine.names)  # every resident tuner is placed
    feats = micro_backbone.forward_features(torch.randn(1, 3, 32, 32))
    with engine.reading() as reading:
        reading.resolve(sorted(resident))
    assert set(engine.run(feats, ["alpha"])) == {"alpha"}
    store.close()


def test_an_eviction_skips_a_tuner_loaded_and_evicted_again_meanwhile(tmp_path, micro_backbone):
    """A load chooses alpha for eviction; before it takes alpha out of the engine, alpha is loaded again and
    evicted again by someone else. The first eviction finds nothing left to keep or remove (before: a KeyError in
    the engine's export, a 500 for the request that was loading; seen in the bench tuners e2e run)."""
    store, engine, registry = _alpha_and_gamma_resident_beta_not(tmp_path, micro_backbone)
    chosen, go_on = threading.Event(), threading.Event()
    real_room_for = registry.resident.room_for
    evicting, failed = {}, []

    def room_for(*args, **kwargs):
        gone = real_room_for(*args, **kwargs)
        if threading.current_thread() is evicting.get("thread") and not chosen.is_set():
            chosen.set()
            go_on.wait(timeout=10)
        return gone

    def load_beta():
        try:
            registry.ensure("beta")
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            failed.append(exc)

    registry.resident.room_for = room_for
    evicting["thread"] = threading.Thread(target=load_beta)
    evicting["thread"].start()
    assert chosen.wait(timeout=10) and "alpha" not in registry.resident
    registry.ensure("alpha")  # loaded again ...
    registry._evict("alpha")  # ... and evicted again, while beta's eviction of alpha waits
    assert "alpha" not in engine.names
    go_on.set()
    evicting["thread"].join(timeout=10)
    assert failed == []
    resident = {t.name for t in registry.resident.items()}
    assert "beta" in resident and "alpha" not in resident
    assert resident <= set(engine.names), (resident, engine.names)
    store.close()


def test_a_packed_head_that_finds_no_room_stays_in_the_host_tier(tmp_path, micro_backbone):
    from server.kinds import ServingRuntime
    from server.registry import TunerRegistry
    from server.residency import ResidencyError

    url = f"file://{tmp_path / 'store'}"
    _fill(url, micro_backbone, ["alpha", "beta"])
    store = open_store(url)
    registry = TunerRegistry(store, ServingRuntime(micro_backbone, "cpu", torch.float32,
                                                   engine=MultiTaskEngine(micro_backbone)),
                             resident_bytes=int(1.5 * _slot_mib(micro_backbone) * 1024 * 1024),
                             host_cache_bytes=64 * 1024 * 1024)
    registry.sync()
    registry.ensure("alpha")
    registry.ensure("beta")  # evicts alpha into the host tier as its packed slot
    version = registry.record("alpha").version
    assert "alpha" not in registry.resident and registry.host.holds("alpha", version)
    assert registry.resident.lease_all(["beta"])  # a request holds beta: no room for alpha now
    with pytest.raises(ResidencyError):
        registry.ensure("alpha", deadline=time.monotonic())
    assert registry.host.holds("alpha", version)  # not lost: the next try copies it back
    registry.resident.release(["beta"])
    registry.ensure("alpha")
    assert "alpha" in registry.resident and not registry.host.holds("alpha", version)
    store.close()


def test_the_host_tier_fills_at_start_and_its_misses_need_no_store_and_no_build(tmp_path, micro_backbone,
                                                                                monkeypatch):
    """After the resident warm-up, the tuners that did not fit go into the host tier as packed heads, newest first,
    while it has room and without evicting: each one's first miss is then a copy (no store read, no build), and
    answers as a tuner built from its artifact does."""
    import server.registry as registry_module
    from server.kinds import ServingRuntime
    from server.registry import EvictedTuner, TunerRegistry

    url = f"file://{tmp_path / 'store'}"
    names = [f"t{i}" for i in range(6)]
    _fill(url, micro_backbone, names)
    slot = _slot_mib(micro_backbone) * 1024 * 1024

    def registry_with(host_slots: float):
        store = open_store(url)
        engine = MultiTaskEngine(micro_backbone)
        registry = TunerRegistry(store, ServingRuntime(micro_backbone, "cpu", torch.float32, engine=engine),
                                 resident_bytes=int(1.5 * slot), host_cache_bytes=int(host_slots * slot))
        registry.sync()
        registry.warm_up()
        assert not registry.warm_up_done.is_set()
        registry.fill_host_tier()
        assert registry.warm_up_done.is_set()
        return registry, engine

    registry, engine = registry_with(host_slots=3.5)  # room for three of the five that are not resident
    (resident,) = [t.name for t in registry.resident.items()]
    assert resident == "t5"  # the newest
    held = [n for n in names if registry.host.holds(n, registry.record(n).version)]
    assert held == ["t2", "t3", "t4"]  # newest first, until the next would not fit: nothing evicted
    assert list(registry.host._entries) == ["t2", "t3", "t4"]  # least recently used first: the newest go last
    builds, reads = [], []
    real_build, real_read = registry_module.build_tuner, registry.store.get_bytes
    monkeypatch.setattr(registry_module, "build_tuner", lambda a: builds.append(a.name) or real_build(a))
    registry.store.get_bytes = lambda *a, **k: reads.append(a[0]) or real_read(*a, **k)
    feats = micro_backbone.forward_features(torch.randn(2, 3, 32, 32))
    reference = MultiTaskEngine(micro_backbone)
    for name in held:
        assert isinstance(registry.host._entries[name][1], EvictedTuner)
        registry.ensure(name)
        reference.put(name, real_build(registry_module.decode_for(registry.runtime, real_read(name, 1))))
        assert torch.equal(engine.run(feats, [name])[name], reference.run(feats, [name])[name]), name
    assert builds == [] and reads == []
    registry.ensure("t0")  # never in the host tier: read and built
    assert builds == ["t0"] and reads == ["t0"]
    registry.store.close()

    registry, _ = registry_with(host_slots=0)
    assert len(registry.host) == 0
    registry.store.close()


def _cold(app, names):
    registry = app.state.registry
    for tuner in registry.resident.items():
        registry._evict(tuner.name)
    assert not any(n in registry.resident for n in names)
    return registry


def _watch_backbone(app):
    """Events set when a backbone pass starts and when it ends."""
    backbone = app.state.backbone
    forward = backbone.forward_features
    started, ended = threading.Event(), threading.Event()

    def watched(images):
        started.set()
        try:
            return forward(images)
        finally:
            ended.set()

    backbone.forward_features = watched
    return started, ended


def test_a_miss_loads_while_its_image_runs_through_the_backbone(tmp_path, run_app, micro_backbone):
    """The load of a tuner that is not resident waits here until the request's backbone pass has started: were
    the load done before the image were queued (as it was), the pass would never start and this would time out."""
    url = f"file://{tmp_path / 'store'}"
    _fill(url, micro_backbone, ["alpha", "beta"])

    async def main():
        async with run_app(server_settings(url, feature_cache_mb=0)) as app:
            await app.wait_for(lambda: len(app.state.registry.resident) == 2)
            registry = _cold(app, ["alpha", "beta"])
            started, _ = _watch_backbone(app)
            real, overlapped = registry._load, []

            def after_the_pass_began(record, deadline=None):
                overlapped.append(started.wait(timeout=10))
                return real(record, deadline)

            registry._load = after_the_pass_began
            r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(1)), "tasks": ["beta", "alpha"]})
            assert r.status_code == 200, r.text
            assert list(r.json()["results"]) == ["beta", "alpha"] and overlapped == [True, True]
            timings = r.json()["timings_ms"]
            assert timings["tuner_load_total"] > 0 and timings["tuner_load"] >= 0
            registry._load = real
            hit = await app.client.post("/v1/classify", json={"image": b64(png_bytes(1)), "tasks": ["alpha"]})
            assert hit.json()["results"]["alpha"] == r.json()["results"]["alpha"]  # the same head, resident now
            assert "tuner_load_total" not in hit.json()["timings_ms"] and hit.json()["timings_ms"]["tuner_load"] == 0

    asyncio.run(main())


def test_a_load_slower_than_the_backbone_pass_defers_the_request_not_the_batch(tmp_path, run_app, micro_backbone):
    """A load still running when its batch's heads are due: the other requests are answered from that batch, the
    slow one is queued again once its tuner is resident and takes its features from the feature cache."""
    url = f"file://{tmp_path / 'store'}"
    _fill(url, micro_backbone, ["alpha", "beta"])

    async def main():
        async with run_app(server_settings(url, max_queue_delay_ms=200.0)) as app:
            await app.wait_for(lambda: len(app.state.registry.resident) == 2)
            registry = _cold(app, ["beta"])
            registry.ensure("alpha")
            _, ended = _watch_backbone(app)
            real = registry._load
            release = threading.Event()

            def until_released(record, deadline=None):
                ended.wait(timeout=10)
                release.wait(timeout=10)  # held past the backbone pass and the heads' grace
                return real(record, deadline)

            registry._load = until_released
            slow = asyncio.ensure_future(app.client.post("/v1/classify", json={"image": b64(png_bytes(1)),
                                                                                "tasks": ["beta"]}))
            fast = await app.client.post("/v1/classify", json={"image": b64(png_bytes(2)), "tasks": ["alpha"]})
            assert fast.status_code == 200 and not slow.done()  # answered while the other waits for its tuner
            release.set()
            r = await slow
            assert r.status_code == 200, r.text
            assert list(r.json()["results"]) == ["beta"]
            assert r.json()["timings_ms"]["backbone_images"] == 0  # its second pass found its features cached

    asyncio.run(main())


def test_pin_and_unpin(tmp_path, run_app, micro_backbone):
    url = f"file://{tmp_path / 'store'}"
    names = [f"t{i}" for i in range(6)]
    _fill(url, micro_backbone, names)
    budget = 2.5 * _slot_mib(micro_backbone)

    async def main():
        async with run_app(server_settings(url, resident_mb=budget, pin=["t0"])) as app:
            registry = app.state.registry
            await app.wait_for(lambda: "t0" in registry.resident, timeout=5)  # pinned: loaded at start
            for name in names[1:]:
                r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(1)), "tasks": [name]})
                assert r.status_code == 200
                assert "t0" in registry.resident  # never evicted while pinned
            assert (await app.client.delete("/v1/tuners/t0/pin")).json() == {"name": "t0", "pinned": False}
            for name in names[1:4]:
                await app.client.post("/v1/classify", json={"image": b64(png_bytes(1)), "tasks": [name]})
            assert "t0" not in registry.resident  # evictable again: least recently used
            r = await app.client.post("/v1/tuners/t5/pin")
            assert r.status_code == 200 and "t5" in registry.resident and "t5" in registry.resident.pinned
            listed = (await app.client.get("/v1/tuners", params={"state": "resident"})).json()["tuners"]
            assert {t["name"]: t["pinned"] for t in listed}["t5"] is True

    asyncio.run(main())


def test_default_task_set(tmp_path, run_app, micro_backbone, monkeypatch):
    import server.routers.classify as classify

    url = f"file://{tmp_path / 'store'}"
    _fill(url, micro_backbone, ["a", "b", "c"])

    async def main():
        async with run_app(server_settings(url)) as app:
            r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(1))})
            assert sorted(r.json()["results"]) == ["a", "b", "c"]  # few tuners: every one
            monkeypatch.setattr(classify, "DEFAULT_TASKS_LIMIT", 2)  # as if the store held more than 64
            r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(1))})
            assert r.status_code == 400 and "name the tasks" in r.json()["error"]
            app.state.registry.resident.pinned.add("b")
            r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(1))})
            assert list(r.json()["results"]) == ["b"]  # many tuners: the pinned ones

    asyncio.run(main())


def test_a_budget_smaller_than_one_tuner_is_refused_at_start(tmp_path, run_app, micro_backbone):
    from restuning.errors import ConfigError

    url = f"file://{tmp_path / 'store'}"
    _fill(url, micro_backbone, ["a"])

    async def main():
        async with run_app(server_settings(url, resident_mb=0.0001)):
            pass

    with pytest.raises(ConfigError, match=r"--resident-mb 0.0001 holds no tuner: the smallest tuner in the store"):
        asyncio.run(main())


def test_pagination_is_stable_while_tuners_are_added(tmp_path, run_app, micro_backbone):
    url = f"file://{tmp_path / 'store'}"
    first = [f"m{i:02d}" for i in range(20)]
    _fill(url, micro_backbone, first)
    extra = [f"{c}{i:02d}" for i in range(4) for c in "az"]  # new names before and after every page

    async def main():
        async with run_app(server_settings(url)) as app:
            store = open_store(url)
            seen, cursor, added = [], None, iter(extra)
            while True:
                params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
                page = (await app.client.get("/v1/tuners", params=params)).json()
                seen += [t["name"] for t in page["tuners"]]
                for _ in range(2):  # tuners arrive between pages
                    name = next(added, None)
                    if name:
                        store.put(make_artifact(micro_backbone, name, seed=len(seen)))
                await app.wait_for(lambda: all(app.state.registry.record(n) for n in extra[:len(seen)]
                                               if n in {*extra}) or True)
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert len(seen) == len(set(seen))  # nothing twice
            assert set(first) <= set(seen)  # nothing that was there from the start is skipped
            assert seen == sorted(seen)
            prefixed = (await app.client.get("/v1/tuners", params={"prefix": "m1", "limit": 100})).json()
            assert [t["name"] for t in prefixed["tuners"]] == [f"m1{i}" for i in range(10)]

    asyncio.run(main())


@pytest.mark.e2e
def test_restune_serve_refuses_such_a_budget_in_one_line(tmp_path, micro_backbone):
    import subprocess
    import sys

    url = f"file://{tmp_path / 'store'}"
    _fill(url, micro_backbone, ["a"])
    out = subprocess.run([sys.executable, "-m", "restune", "serve", "--backbone", "restune_vit_micro", "--weights",
                          "random:0", "--store", url, "--resident-mb", "0.0001", "--port", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        "restune: error: --resident-mb 0.0001 holds no tuner: the smallest tuner in the store takes")
