import json

from bench.multitask import multitask_result, run_multitask_bench
from bench.results import emit


def test_multitask_bench_schema_and_files(tmp_path):
    payload = run_multitask_bench(
        backbone_name="restune_vit_micro", batches=[2], task_counts=[1, 3], poolings=["token", "avg"],
        repeats=2, warmup=1,
    )
    assert {"machine", "device", "torch", "results"} <= set(payload)
    methods = {r["method"] for r in payload["results"]}
    assert methods == {"backbone", "engine", "naive", "full_models"}
    for r in payload["results"]:
        assert set(r) == {"backbone", "batch", "pooling", "tasks", "method", "median_ms"}
        assert r["median_ms"] > 0
    assert len(payload["results"]) == 2 * 2 * 4
    result = multitask_result(payload, "cpu")
    assert emit(result, out_dir=tmp_path) == 0
    assert json.loads((tmp_path / f"{result.name}.json").read_text())["results"] == payload["results"]
    assert (tmp_path / f"{result.name}.png").stat().st_size > 1000
