"""`restune bench soak`: short runs against a real server, for the report's shape and its verdicts.

The real soak (600 s) is a benchmark, run by hand on a quiet machine (docs/benchmarks.md, "Soak"); these runs check
that the command measures what it says and that it fails when the server misbehaves.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

SHORT = ["--backbone", "restune_vit_micro", "--images", "24", "--image-size", "32", "--tasks", "3", "--churn", "2",
         "--sample-interval", "0.25"]


def soak(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out_dir = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "restune", "bench", "soak", *SHORT, "--out-dir", str(out_dir),
                           *args], capture_output=True, text=True, timeout=300)
    reports = sorted(out_dir.glob("soak-*.json"))
    assert len(reports) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc, json.loads(reports[0].read_text())


@pytest.mark.e2e
def test_short_soak_report(tmp_path):
    proc, report = soak(tmp_path, "--duration", "6", "--warmup", "2", "--rate", "15", "--write-fraction", "0.2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASSED" in proc.stdout
    assert report["benchmark"] == "soak" and report["passed"] is True
    assert report["errors"] == {"total": 0, "by_kind": {}, "examples": {}}
    ops = report["operations"]
    assert ops["classify"]["count"] > 50 and ops["upload"]["count"] >= 3 and ops["delete"]["count"] >= 2
    for kind in ("classify", "upload", "delete"):
        assert ops[kind]["p50_ms"] <= ops[kind]["p99_ms"] <= ops[kind]["max_ms"]
    sched = report["schedule"]
    assert sched["completed_ok"] == sched["scheduled"] == sum(op["count"] for op in ops.values())
    assert sched["scheduled"] == pytest.approx(15 * 8, abs=2)  # fixed rate: 15 ops/s for 2 + 6 s
    samples = report["rss_samples"]
    assert len(samples) >= 20 and all(s["rss_mb"] > 50 for s in samples)
    assert [s["t_s"] for s in samples] == sorted(s["t_s"] for s in samples)
    memory = report["memory"]
    assert memory["steady"] in (True, False) and memory["measured_samples"] >= 8
    assert memory["rss_max_mb"] >= memory["rss_end_mb"] > 0 and "second_half_slope_mb_per_min" in memory
    assert report["final_tuners"]["consistent"] is True
    assert {f"soak-stable-{i:02d}" for i in range(3)} <= set(report["final_tuners"]["served"])
    assert report["server"]["hotload_failures"] == 0
    assert {"machine", "device", "torch", "measured_at", "config"} <= set(report)
    assert (tmp_path / "results" / "soak-restune_vit_micro-file-6s-cpu-{}t.png".format(
        report["machine"]["torch_threads"])).stat().st_size > 1000


@pytest.mark.e2e
def test_soak_fails_when_requests_fail(tmp_path):
    # a server that refuses every upload (the artifacts are bigger than its limit): the soak must say FAILED
    proc, report = soak(tmp_path, "--duration", "3", "--warmup", "0.5", "--rate", "12", "--write-fraction", "0.3",
                        "--server-arg=--max-upload-mb=0.0001")
    assert proc.returncode == 1 and "FAILED" in proc.stdout
    assert report["passed"] is False
    assert report["errors"]["by_kind"].get("upload 413", 0) >= 1
    assert "upload 413" in report["errors"]["examples"] and "limit" in report["errors"]["examples"]["upload 413"]
    assert report["operations"]["classify"]["count"] > 0 and not any(
        k.startswith("classify") for k in report["errors"]["by_kind"])


def test_memory_verdict():
    """Slope over the measured run, plus a cap on the peak: a creep fails however it is spread over the run."""
    from bench.soak import _memory_verdict

    def run(rss_at, growth_mb=16, cap_mb=64) -> dict:
        return _memory_verdict([{"t_s": t, "rss_mb": rss_at(t)} for t in range(100)], warmup=10, growth_mb=growth_mb,
                               cap_mb=cap_mb)

    assert run(lambda t: 500 + (t % 3))["steady"] is True  # flat, with noise
    leak = run(lambda t: 500 + t)  # 1 MiB/s for as long as it runs
    assert leak["steady"] is False and leak["slope_mb_per_min"] == pytest.approx(60, rel=1e-6)
    assert leak["growth_mb"] == pytest.approx(89, rel=1e-6)
    assert run(lambda t: 300 + 20 * min(t, 10))["steady"] is True  # allocations on the first requests: warm-up
    # a creep of 0.25 MiB/s, 22 MiB in all, spread evenly: the peak halves differ by 11 MiB (the old rule passed
    # it); the slope says 22 MiB over the run
    creep = run(lambda t: 500 + 0.25 * t)
    assert creep["steady"] is False and creep["growth_mb"] == pytest.approx(22.25, rel=1e-6)
    assert run(lambda t: 500 + 0.1 * t)["steady"] is True  # 9 MiB over the run: inside the allowance
    burst = run(lambda t: 500 + (100 if 40 <= t < 45 else 0))  # one burst of 100 MiB, given back: over the cap
    assert burst["steady"] is False and burst["peak_over_start_mb"] == 100 and burst["growth_mb"] < 16
    assert run(lambda t: 500 + (30 if 40 <= t < 45 else 0))["steady"] is True  # a small burst: under the cap
    short = _memory_verdict([{"t_s": t, "rss_mb": 500} for t in range(12)], warmup=10, growth_mb=16, cap_mb=64)
    assert short["steady"] is None and "too few samples" in short["why"]


def test_latency_verdict():
    from bench.soak import _latency_verdict

    steady = [(t / 10, 0.05 + (t % 7) / 1000) for t in range(10, 3100)]  # 10 requests/s for 300 s after 1 s
    verdict = _latency_verdict(steady, warmup=1, duration=300, window=600, ratio=1.2)
    assert verdict["window_s"] == 100 and verdict["ok"] is True
    slower = [(t, lat * (2 if t > 200 else 1)) for t, lat in steady]  # p99 doubles in the last third
    assert _latency_verdict(slower, warmup=1, duration=300, window=600, ratio=1.2)["ok"] is False
    assert _latency_verdict(steady, warmup=1, duration=120, window=600, ratio=1.2)["ok"] is None  # 40 s windows
