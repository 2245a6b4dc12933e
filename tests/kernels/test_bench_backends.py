"""`restune bench multitask` can compare the fused engine with the PyTorch engine in one run."""
from __future__ import annotations

import pytest

from bench.multitask import multitask_result, run_multitask_bench
from restuning.errors import ConfigError


@pytest.mark.interpreter
def test_bench_engine_vs_engine_torch_same_schema(interpreter, tmp_path):
    payload = run_multitask_bench(
        backbone_name="restune_vit_micro", batches=[1], task_counts=[3], poolings=["token", "avg"],
        methods=["backbone", "engine", "engine_torch", "naive"], repeats=1, warmup=0, kernel_backend="triton",
    )
    assert payload["config"]["kernel_backend"] == "triton" and payload["config"]["engine_path"] == "triton"
    assert {r["method"] for r in payload["results"]} == {"backbone", "engine", "engine_torch", "naive"}
    for r in payload["results"]:
        assert set(r) == {"backbone", "batch", "pooling", "tasks", "method", "median_ms"}
    for row in payload["ratios"]:
        assert {"engine_over_backbone", "engine_torch_over_engine", "naive_over_engine"} <= set(row)
    assert multitask_result(payload, "cpu").name.startswith("multitask-restune_vit_micro-cpu-")  # float32
    payload["config"]["dtype"] = "float16"  # fp16/bf16 runs of one device do not overwrite each other
    assert multitask_result(payload, "cpu").name.startswith("multitask-restune_vit_micro-float16-cpu-")


def test_bench_engine_stage_needs_cuda():
    with pytest.raises(ConfigError, match="engine_stage"):
        run_multitask_bench(backbone_name="restune_vit_micro", methods=["engine_stage"], device="cpu")
