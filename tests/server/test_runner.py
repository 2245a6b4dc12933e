"""The classify runner on a real registry: each request gets its own tasks, and a task gone before its batch
is named."""
import torch

from restuning.engine import MultiTaskEngine
from restuning.preprocess import ImagePreprocessor
from server.batcher import Job
from server.feature_cache import FeatureCache
from server.kinds import ServingRuntime
from server.registry import TunerRegistry
from server.runner import ClassifyRequest, ClassifyRunner, UnknownTasksError


def _runner(store_url, backbone):
    from tuner_store.urls import open_store

    engine = MultiTaskEngine(backbone)
    registry = TunerRegistry(open_store(store_url), ServingRuntime(backbone, "cpu", torch.float32, engine=engine))
    registry.sync()
    for name in registry.names():
        registry.ensure(name)
    pre = ImagePreprocessor(backbone.info)
    return ClassifyRunner(backbone, engine, FeatureCache(0), device="cpu", dtype=torch.float32,
                          normalize=pre.normalize), registry


def _job(backbone, tasks, seed=0, **kw):
    pixels = torch.randint(0, 255, (3, *backbone.info.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    return Job(ClassifyRequest(pixels=pixels, cache_key="", tasks=tasks, top_k=2, **kw), future=None)


def test_a_task_deleted_before_its_batch_is_named(store_url, micro_backbone):
    runner, registry = _runner(store_url, micro_backbone)
    registry.runtime.engine.remove("beta")
    named, fine = runner.run([_job(micro_backbone, ["alpha", "beta"]), _job(micro_backbone, ["gamma"])])
    assert isinstance(named, UnknownTasksError) and named.unknown == ["beta"]
    assert list(fine["results"]) == ["gamma"]


def test_each_request_gets_its_own_tasks(store_url, micro_backbone):
    runner, _ = _runner(store_url, micro_backbone)
    every, one, other, bad = runner.run([
        _job(micro_backbone, ["alpha", "beta", "gamma"]), _job(micro_backbone, ["beta"]),
        _job(micro_backbone, ["gamma", "alpha"], seed=1, probabilities=True), _job(micro_backbone, ["beta", "nope"]),
    ])
    assert list(every["results"]) == ["alpha", "beta", "gamma"]
    assert list(one["results"]) == ["beta"] and one["timings_ms"]["batch_size"] == 3
    assert every["results"]["beta"] == one["results"]["beta"]  # same image, same head, same answer
    assert list(other["results"]) == ["gamma", "alpha"]
    probs = other["results"]["gamma"]["probabilities"]
    assert len(probs) == 5 and abs(sum(probs) - 1) < 1e-5 and round(max(probs), 6) == other["results"]["gamma"]["scores"][0]
    assert "probabilities" not in every["results"]["alpha"]
    assert isinstance(bad, UnknownTasksError) and bad.unknown == ["nope"]


def test_a_default_set_task_deleted_during_the_backbone_pass_is_left_out(store_url, micro_backbone):
    """A tuner deleted while its batch runs the backbone: a request that named it gets 404, a request for the
    default set gets the others (it never named it)."""
    runner, registry = _runner(store_url, micro_backbone)
    forward = micro_backbone.forward_features

    def delete_midway(images):
        feats = forward(images)
        registry.runtime.engine.remove("beta")
        return feats

    runner.backbone = type("Deleting", (), {"forward_features": staticmethod(delete_midway)})()
    default, named = runner.run([_job(micro_backbone, ["alpha", "beta", "gamma"], named=False),
                                 _job(micro_backbone, ["beta", "gamma"], seed=1)])
    assert list(default["results"]) == ["alpha", "gamma"]
    assert isinstance(named, UnknownTasksError) and named.unknown == ["beta"]
