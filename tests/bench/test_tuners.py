"""`restune bench tuners`, a short run against real servers: the report has every budget and what it measures.

The real run (N up to 2,000, ViT-Ti) is a benchmark, run by hand on a quiet machine (docs/benchmarks.md)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.e2e
def test_short_tuners_run(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "restune", "bench", "tuners", "--backbone", "restune_vit_micro", "--counts", "5,50",
         "--pooling", "avg", "--mixes", "1:zipf", "--rounds", "1", "--window-s", "1.5", "--puts", "2", "--cold-probes", "3",
         "--image-size", "32", "--engine-tuners", "10", "--out-dir", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(next(out.glob("tuners-*.json")).read_text())
    runs = report["pooling"]["avg"]["runs"]
    assert [r["budget"] for r in runs] == ["all", "10%", "10%, no host cache"]
    assert runs[1]["host_cache_mb"] > 0 and runs[2]["host_cache_mb"] == 0
    for run in runs:
        server = run["mixes"][0]["server"]
        assert server["requests_ok"] > 0 and server["errors"] == {}, run
    assert runs[0]["mixes"][0]["server"]["share_that_loaded"] == 0  # every tuner resident
    for run in runs[1:]:  # 5 of 50 resident: most requests load, and say how long the load took
        server = run["mixes"][0]["server"]
        assert server["share_that_loaded"] > 0.3
        assert server["cold_miss_load_ms"]["p50"] > 0 and server["cold_miss_added_ms"]["p50"] is not None
        assert server["cold_miss_added_end_to_end_ms"]["p50"] is not None
    assert runs[0]["put_to_serving"]["puts"] == 2
    cold = runs[0]["cold_miss"]  # new tuners, each loaded from the store by its first request
    assert cold["probes"] == 3 and all(p["load_ms"] is not None for p in cold["pairs"])
    assert cold["added_ms"]["p99"] is not None
    # the host tier fills at start with every tuner that is not resident (its budget holds them all), or none
    assert runs[1]["settled"]["resident"] + runs[1]["settled"]["host_tier"] == 50
    assert runs[2]["settled"]["host_tier"] == 0
