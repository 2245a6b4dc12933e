"""The classify runner on a real registry: what a batch answers when tuners change under it."""
import torch

from restuning.preprocess import ImagePreprocessor
from server.batcher import Job
from server.feature_cache import FeatureCache
from server.kinds import ServingRuntime
from server.registry import TunerRegistry
from server.runner import ClassifyRequest, ClassifyRunner, NoTunersError, UnknownTasksError


def _runner(store_url, backbone):
    from tuner_store.urls import open_store

    registry = TunerRegistry(open_store(store_url), ServingRuntime(backbone, "cpu", torch.float32))
    registry.load_all()
    pre = ImagePreprocessor(backbone.info)
    return ClassifyRunner(backbone, registry, FeatureCache(0), device="cpu", dtype=torch.float32,
                          normalize=pre.normalize), registry


def _job(backbone, tasks):
    pixels = torch.zeros((3, *backbone.info.image_size), dtype=torch.uint8)
    return Job(ClassifyRequest(pixels=pixels, cache_key="", tasks=tasks, top_k=1), future=None)


def test_a_task_deleted_before_its_batch_is_named(tmp_path, micro_backbone):
    from tuner_store.urls import open_store

    url = f"file://{tmp_path / 'empty'}"
    open_store(url).close()
    runner, _ = _runner(url, micro_backbone)
    named, unnamed = runner.run([_job(micro_backbone, ["gone"]), _job(micro_backbone, None)])
    assert isinstance(named, UnknownTasksError) and named.unknown == ["gone"]
    assert isinstance(unnamed, NoTunersError)


def test_each_request_gets_its_own_tasks(store_url, micro_backbone):
    runner, registry = _runner(store_url, micro_backbone)
    both, one, bad = runner.run([_job(micro_backbone, None), _job(micro_backbone, ["beta"]),
                                 _job(micro_backbone, ["beta", "nope"])])
    assert sorted(both["results"]) == ["alpha", "beta", "gamma"]
    assert list(one["results"]) == ["beta"] and one["timings_ms"]["batch_size"] == 2
    assert both["results"]["beta"] == one["results"]["beta"]  # same image, same head, same answer
    assert isinstance(bad, UnknownTasksError) and bad.unknown == ["nope"]
