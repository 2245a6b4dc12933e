"""`restune bench serve`: a real server on loopback under N concurrent clients vs the raw engine.

In one run: (1) start `restune serve` as a subprocess on a free loopback port with
T random tuners in a fresh local store; (2) in R rounds, drive it with N concurrent
clients for S/R seconds using distinct images (the feature cache is off so every
request pays for its backbone share), then run the raw engine in this process at
the server's mean batch size for S/R seconds while the server idles; (3) measure
put-to-serving latency of hot-loaded tuners. Throughput ratio = server / raw
engine over the whole S seconds of each.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from bench.common import device_slug, machine_info
from bench.multitask import VTAB_CLASSES
from bench.results import BenchResult
from restuning.backbones import create_backbone
from restuning.bypass import BypassConfig, build_bypass
from restuning.engine import MultiTaskEngine
from restuning.preprocess import ImagePreprocessor, load_image
from tuner_store.artifact import classification_artifact
from tuner_store.kinds import build_tuner
from tuner_store.urls import open_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jpeg_images(count: int, size: int, seed: int = 0) -> list[bytes]:
    """Distinct smooth images (JPEG) so decoding cost is realistic and no two requests share a cache key."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(count):
        a, b, c = rng.uniform(0.5, 6.0, 3)
        phase = rng.uniform(0, 6.28, 3)
        channels = [np.sin(a * 6.28 * xx + phase[0]) * np.cos(b * 6.28 * yy + phase[1]),
                    np.sin(c * 6.28 * (xx + yy) + phase[2]), np.cos(a * 3.14 * xx * yy + phase[1])]
        pixels = ((np.stack(channels, -1) + 1) * 127.5 + rng.normal(0, 8, (size, size, 3))).clip(0, 255)
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _fill_store(store_url: str, backbone, tasks: int) -> list[str]:
    store = open_store(store_url)
    names = []
    for i in range(tasks):
        classes = VTAB_CLASSES[i % len(VTAB_CLASSES)]
        bypass = build_bypass(BypassConfig.create(backbone.info, num_classes=classes), backbone.embed_dim, seed=i)
        name = f"task{i:02d}"
        store.put(classification_artifact(name, bypass, [f"c{k}" for k in range(classes)], backbone, {}))
        names.append(name)
    store.close()
    return names


def _histogram_totals(metrics_text: str, name: str) -> tuple[float, float]:
    """(sum, count) of one Prometheus histogram; zeros when it has no samples yet."""
    total = re.search(rf"^{name}_sum (\S+)$", metrics_text, re.M)
    count = re.search(rf"^{name}_count (\S+)$", metrics_text, re.M)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


_HISTOGRAMS = ("restune_batch_size", "restune_backbone_seconds", "restune_heads_seconds")


def _histogram_deltas(before: str, after: str) -> dict[str, tuple[float, float]]:
    """(sum, count) gained by each server histogram between two /metrics scrapes."""
    out = {}
    for name in _HISTOGRAMS:
        (s0, c0), (s1, c1) = _histogram_totals(before, name), _histogram_totals(after, name)
        out[name] = (s1 - s0, c1 - c0)
    return out


def _summarize_load(windows: list[dict]) -> dict:
    """One report over every load window: throughput, latency percentiles, server-side batch figures."""
    latencies = sorted(x for w in windows for x in w["latencies"])
    errors: dict[str, int] = {}
    for w in windows:
        for k, v in w["errors"].items():
            errors[k] = errors.get(k, 0) + v
    elapsed = sum(w["elapsed"] for w in windows)
    totals = {name: (sum(w["histograms"][name][0] for w in windows), sum(w["histograms"][name][1] for w in windows))
              for name in _HISTOGRAMS}
    batches = totals["restune_batch_size"][1]
    backbone_s, heads_s = totals["restune_backbone_seconds"][0], totals["restune_heads_seconds"][0]

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2) if latencies else None

    def per_batch(seconds: float) -> float | None:
        return round(seconds / batches * 1000, 3) if batches else None

    return {
        "requests_ok": len(latencies),
        "errors": errors,
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 3) if elapsed else 0.0,
        "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0)},
        "mean_batch_size": totals["restune_batch_size"][0] / batches if batches else None,
        "mean_backbone_ms": per_batch(backbone_s),
        "mean_heads_ms": per_batch(heads_s),
        # share of the time the model thread spent in the backbone or heads; the rest is input handling,
        # post-processing and waiting for work
        "model_busy_fraction": round((backbone_s + heads_s) / elapsed, 4) if elapsed else None,
        "client_cpu_cores": round(sum(w["client_cpu_s"] for w in windows) / elapsed, 3) if elapsed else None,
    }


def _classify_request(host: str, port: int, image: bytes) -> bytes:
    """One complete HTTP/1.1 request, encoded once up front so the load generator costs almost no CPU."""
    body = json.dumps({"image": base64.b64encode(image).decode(), "top_k": 1}).encode()
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _drive(url: str, images: list[bytes], concurrency: int, duration: float) -> dict:
    """One load window: N keep-alive connections, each sending its next request as soon as the last answer arrives.

    The client shares the machine's cores with the server, so it is a minimal HTTP/1.1 writer/reader
    (like wrk) rather than a full client library; its own CPU use is reported as `client_cpu_cores`.
    """
    host, port = url.removeprefix("http://").split(":")
    requests = [_classify_request(host, int(port), img) for img in images]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.perf_counter() + duration

    async def worker(offset: int):
        reader, writer = await asyncio.open_connection(host, int(port))
        i = offset
        try:
            while time.perf_counter() < stop_at:
                request = requests[i % len(requests)]
                i += concurrency
                start = time.perf_counter()
                try:
                    writer.write(request)
                    await writer.drain()
                    status = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                if status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
        finally:
            writer.close()

    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        metrics_before = (await client.get("/metrics")).text
        cpu_before = time.process_time()
        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
        client_cpu = time.process_time() - cpu_before
        metrics_after = (await client.get("/metrics")).text
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed, "client_cpu_s": client_cpu,
            "histograms": _histogram_deltas(metrics_before, metrics_after)}


async def _hotload_latency(url: str, store_url: str, backbone, puts: int) -> dict:
    """Seconds from a store put (as a trainer would do it) until the server answers with the new version."""
    store = open_store(store_url)
    samples = []
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        for i in range(puts):
            bypass = build_bypass(BypassConfig.create(backbone.info, num_classes=3), backbone.embed_dim, seed=1000 + i)
            start = time.perf_counter()
            record = store.put(classification_artifact("hotload", bypass, ["a", "b", "c"], backbone, {}))
            while True:
                r = await client.get("/v1/tuners/hotload")
                if r.status_code == 200 and r.json().get("serving_version") == record.version:
                    break
                if time.perf_counter() - start > 30:
                    raise RuntimeError("a hot-loaded tuner did not start serving within 30 s")
                await asyncio.sleep(0.005)
            samples.append(time.perf_counter() - start)
    store.close()
    samples.sort()
    return {
        "puts": puts,
        "p50_s": round(statistics.median(samples), 4),
        "p99_s": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 4),
        "max_s": round(samples[-1], 4),
    }


class _RawEngine:
    """The engine alone, in this process, on preprocessed distinct images: the server's ceiling."""

    def __init__(self, backbone, names: list[str], store_url: str, images: list[bytes]):
        store = open_store(store_url)
        heads = {n: build_tuner(store.get(n)) for n in names}
        store.close()
        self.engine = MultiTaskEngine(backbone, heads)
        pre = ImagePreprocessor(backbone.info)
        self.pixels = torch.stack([pre(load_image(img)) for img in images])
        self.times: list[float] = []
        self.images_done = 0
        self.elapsed = 0.0

    def run(self, batch: int, duration: float) -> None:
        """Batch after batch for `duration` seconds, added to the running totals."""
        batches = [self.pixels[i:i + batch] for i in range(0, len(self.pixels) - batch + 1, batch)]
        if not self.times:
            for b in batches[:2]:  # warm-up
                self.engine.classify(b)
        began = time.perf_counter()
        while time.perf_counter() - began < duration:
            start = time.perf_counter()
            self.engine.classify(batches[len(self.times) % len(batches)])
            self.times.append(time.perf_counter() - start)
            self.images_done += batch
        self.elapsed += time.perf_counter() - began

    def summary(self, batch: int) -> dict:
        return {"batch": batch, "duration_s": round(self.elapsed, 3),
                "median_batch_ms": round(statistics.median(self.times) * 1000, 3) if self.times else None,
                "throughput_ips": round(self.images_done / self.elapsed, 3) if self.elapsed else 0.0}


def run_serve_bench(
    *,
    backbone_name: str = "vit_tiny_patch16_224",
    tasks: int = 19,
    concurrency: int = 16,
    duration: float = 30.0,
    max_batch_size: int | None = None,
    max_queue_delay_ms: float = 5.0,
    hotload_puts: int = 20,
    image_size: int = 256,
    rounds: int = 3,
) -> dict:
    max_batch_size = max_batch_size or max(1, concurrency // 2)
    backbone = create_backbone(backbone_name, weights="random:0")
    images = _jpeg_images(max(64, 4 * concurrency), image_size)
    with tempfile.TemporaryDirectory(prefix="restune-bench-") as tmp:
        store_url = f"file://{tmp}/store"
        names = _fill_store(store_url, backbone, tasks)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "restune", "serve", "--backbone", backbone_name, "--weights", "random:0",
               "--store", store_url, "--port", str(port), "--device", "cpu", "--feature-cache-mb", "0",
               "--max-batch-size", str(max_batch_size), "--max-queue-delay-ms", str(max_queue_delay_ms),
               "--max-queue-size", str(4 * concurrency), "--log-level", "warning"]
        log_path = Path(tmp) / "server.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ})
            try:
                _wait_ready(url, proc, log_path)
                asyncio.run(_drive(url, images, concurrency, min(3.0, duration)))  # warm-up
                # Server and raw engine take turns, so a machine whose speed drifts (shared cores,
                # thermal limits) slows both sides of the ratio alike; the idle server costs nothing
                # while the engine runs.
                raw = _RawEngine(backbone, names, store_url, images)
                windows: list[dict] = []
                batch = max_batch_size
                for _ in range(rounds):
                    windows.append(asyncio.run(_drive(url, images, concurrency, duration / rounds)))
                    if len(windows) == 1:
                        first = _summarize_load(windows)
                        batch = max(1, round(first["mean_batch_size"] or max_batch_size))
                    raw.run(batch, duration / rounds)
                hotload = asyncio.run(_hotload_latency(url, store_url, backbone, hotload_puts)) if hotload_puts else None
            finally:
                stop_server(proc, timeout=20)
    load = _summarize_load(windows)
    raw_summary = raw.summary(batch)
    ratio = load["throughput_rps"] / raw_summary["throughput_ips"] if raw_summary["throughput_ips"] else None
    payload = machine_info("cpu")
    payload.update(
        benchmark="serve",
        config={"backbone": backbone_name, "weights": "random:0", "tasks": tasks, "concurrency": concurrency,
                "duration_s": duration, "rounds": rounds, "max_batch_size": max_batch_size,
                "max_queue_delay_ms": max_queue_delay_ms,
                "feature_cache": "off", "image": f"{image_size}x{image_size} JPEG, distinct per request",
                "transport": "HTTP/1.1 JSON + base64 on loopback, server in a separate process"},
        server=load,
        raw_engine=raw_summary,
        throughput_ratio=round(ratio, 4) if ratio is not None else None,
        hotload=hotload,
    )
    return payload


def stop_server(proc: subprocess.Popen, timeout: float) -> None:
    """SIGINT (uvicorn's graceful shutdown), then SIGKILL if it does not end in time."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 180.0) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {timeout:.0f} s")


def serve_result(payload: dict, backbone: str, concurrency: int) -> BenchResult:
    server, raw = payload["server"], payload["raw_engine"]
    lines = [f"server: {server['throughput_rps']} req/s, latency {server['latency_ms']}, "
             f"mean batch {server['mean_batch_size']}, errors {server['errors'] or 'none'}",
             f"server model thread: backbone {server['mean_backbone_ms']} ms + heads {server['mean_heads_ms']} ms "
             f"per batch, busy {server['model_busy_fraction']} of the time",
             f"raw engine at batch {raw['batch']}: {raw['throughput_ips']} img/s, "
             f"median batch {raw['median_batch_ms']} ms",
             f"throughput ratio server / raw engine: {payload['throughput_ratio']}"]
    if payload["hotload"]:
        lines.append(f"put-to-serving latency: {payload['hotload']}")
    return BenchResult(f"serve-{backbone}-c{concurrency}-{device_slug('cpu')}", payload, "\n".join(lines))
