"""`restune bench serve`: the report's arithmetic, and one short real run (server subprocess + raw engine)."""
from bench.serve import _histogram_deltas, _summarize_load, run_serve_bench

METRICS_BEFORE = """restune_batch_size_sum 10.0
restune_batch_size_count 4.0
restune_backbone_seconds_sum 1.0
restune_backbone_seconds_count 4.0
restune_heads_seconds_sum 0.1
restune_heads_seconds_count 4.0
"""
METRICS_AFTER = """restune_batch_size_sum 26.0
restune_batch_size_count 6.0
restune_backbone_seconds_sum 1.5
restune_backbone_seconds_count 6.0
restune_heads_seconds_sum 0.2
restune_heads_seconds_count 6.0
"""


def test_windows_are_merged_and_warm_up_left_out():
    deltas = _histogram_deltas(METRICS_BEFORE, METRICS_AFTER)
    assert deltas["restune_batch_size"] == (16.0, 2.0)
    empty = _histogram_deltas("", "")
    windows = [
        {"latencies": [0.1, 0.3], "errors": {"503": 1}, "elapsed": 1.0, "client_cpu_s": 0.01, "histograms": deltas},
        {"latencies": [0.2, 0.4], "errors": {"503": 2, "OSError": 1}, "elapsed": 1.0, "client_cpu_s": 0.03,
         "histograms": empty},
    ]
    report = _summarize_load(windows)
    assert report["requests_ok"] == 4 and report["throughput_rps"] == 2.0
    assert report["errors"] == {"503": 3, "OSError": 1}
    assert report["latency_ms"]["p50"] == 300.0 and report["latency_ms"]["max"] == 400.0
    assert report["mean_batch_size"] == 8.0
    assert report["mean_backbone_ms"] == 250.0 and report["mean_heads_ms"] == 50.0
    assert report["model_busy_fraction"] == 0.3 and report["client_cpu_cores"] == 0.02


def test_short_real_run():
    payload = run_serve_bench(backbone_name="restune_vit_micro", tasks=3, concurrency=4, duration=2.0, rounds=2,
                              hotload_puts=2, image_size=48)
    server, raw = payload["server"], payload["raw_engine"]
    assert server["requests_ok"] > 0 and server["errors"] == {}
    assert 1 <= server["mean_batch_size"] <= 2  # concurrency 4 -> batch cap 2
    assert raw["batch"] == round(server["mean_batch_size"]) and raw["throughput_ips"] > 0
    assert payload["throughput_ratio"] == round(server["throughput_rps"] / raw["throughput_ips"], 4)
    assert payload["config"]["rounds"] == 2 and payload["hotload"]["puts"] == 2
