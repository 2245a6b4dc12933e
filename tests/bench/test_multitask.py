import json

from restuning.bench_multitask import run_multitask_bench, save_multitask


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
    paths = save_multitask(payload, tmp_path, "cpu")
    assert json.loads(paths[0].read_text())["results"] == payload["results"]
    assert paths[1].suffix == ".png" and paths[1].stat().st_size > 1000
