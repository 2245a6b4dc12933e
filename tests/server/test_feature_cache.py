"""The feature cache: one slab, allocated once; LRU eviction; a batch that evicts the slot of one of its own hits
still computes with the hit's features."""
from __future__ import annotations

import torch

from server.feature_cache import FeatureCache
from tests.server.test_runner import _job, _runner


def _features(seed: int, layers: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 4, generator=g) for _ in range(layers)]


def test_the_slab_is_allocated_once_and_entries_are_copies():
    entry_bytes = 3 * 5 * 4 * 4
    cache = FeatureCache(2 * entry_bytes + 10)  # room for two entries
    first = _features(0)
    cache.put("a", first)
    slab = cache._slab
    assert cache.capacity == 2 and cache.size_bytes == entry_bytes
    first[0].zero_()  # the caller's tensors are not kept
    assert torch.equal(cache.get("a")[1], _features(0)[1]) and not torch.equal(cache.get("a")[0], first[0])
    cache.put("b", _features(1))
    assert cache.get("a") is not None  # "a" is now the most recent
    for i in range(2, 50):
        cache.put(f"k{i}", _features(i))
        assert cache._slab is slab  # never reallocated, whatever the churn
    assert len(cache) == 2 and cache.size_bytes == 2 * entry_bytes
    assert cache.get("a") is None and torch.equal(cache.get("k49")[2], _features(49)[2])
    cache.put("odd", [torch.zeros(2, 2)] * 3)  # another shape: not cached, nothing breaks
    assert cache.get("odd") is None and len(cache) == 2


def test_nothing_fits_disables_the_cache():
    cache = FeatureCache(10)
    cache.put("a", _features(0))
    assert cache.max_bytes == 0 and cache.get("a") is None


def test_a_batch_that_evicts_its_own_hit(store_url, micro_backbone):
    """Two images, one cached: the miss's put takes the only slot, the hit's view into it must be read first."""
    runner, _ = _runner(store_url, micro_backbone)
    reference = runner.run([_job(micro_backbone, ["alpha"], seed=1), _job(micro_backbone, ["alpha"], seed=2)])
    one_entry = sum(f[0].numel() * f[0].element_size() for f in micro_backbone.forward_features(
        torch.zeros(1, 3, *micro_backbone.info.image_size)))
    runner.cache = FeatureCache(one_entry)
    jobs = [_job(micro_backbone, ["alpha"], seed=1), _job(micro_backbone, ["alpha"], seed=2)]
    for job, key in zip(jobs, ("one", "two")):
        job.payload.cache_key = key
    runner.run([jobs[0]])  # "one" cached
    hit_and_miss = runner.run(jobs)
    assert runner.cache.capacity == 1 and runner.cache.get("two") is not None
    for got, want in zip(hit_and_miss, reference):
        assert got["results"] == want["results"]
    assert hit_and_miss[0]["timings_ms"]["backbone_images"] == 1
