"""`restune bench v2`: the same server, images and concurrency over /v1 multipart and over /v2 via tritonclient.

One server subprocess (T random tuners, feature cache off, distinct JPEGs). In R rounds the two protocols take
turns for S/R seconds each, so a machine whose speed drifts slows both alike:

- /v1: POST /v1/classify, multipart `file` + `top_k=1`, every task; each request encoded once up front and sent
  by a minimal HTTP/1.1 client (bench.serve), so the client costs almost no CPU;
- /v2: NVIDIA's `tritonclient` (its asyncio HTTP client), the multi-task model `_all` with one image per request
  (IMAGE, BYTES [1], binary tensor data, the client's default), `top_k=1`, and every task's labels as outputs:
  the same answer /v1 gives.

Throughput ratio = /v2 requests per second / /v1 requests per second over the whole of each. The client's CPU
time is reported beside it: on a 2-core machine the client shares the cores with the server, and tritonclient
encodes every request (/v1's are pre-encoded), so the ratio is a conservative one for /v2.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import device_slug, machine_info
from bench.results import BenchResult
from bench.serve import (
    _fill_store,
    _histogram_deltas,
    _jpeg_images,
    _read_response,
    _summarize_load,
    _wait_ready,
    free_port,
    stop_server,
)
from restuning.backbones import create_backbone

BOUNDARY = "restune-bench-boundary"


def _multipart_request(host: str, port: int, image: bytes) -> bytes:
    """One complete /v1/classify multipart request (file + top_k=1), encoded once."""
    parts = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"image.jpg\"\r\n"
             f"Content-Type: image/jpeg\r\n\r\n").encode() + image + (
        f"\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n1\r\n--{BOUNDARY}--\r\n").encode()
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(parts)}\r\n"
            "Connection: keep-alive\r\n\r\n")
    return head.encode() + parts


async def _window(url: str, concurrency: int, duration: float, send) -> dict:
    """N workers, each sending its next request when the last answer arrives; what bench.serve reports per window."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.perf_counter() + duration

    async def worker(offset: int):
        state = await send.open()
        i = offset
        try:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    await send(state, i)
                except Exception as exc:  # counted by kind; a benchmark reports errors instead of stopping
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    state = await send.reopen(state)
                else:
                    latencies.append(time.perf_counter() - start)
                i += concurrency
        finally:
            await send.close(state)

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


class _V1Multipart:
    """Pre-encoded multipart requests over one keep-alive connection per worker."""

    def __init__(self, url: str, images: list[bytes]):
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.requests = [_multipart_request(self.host, self.port, image) for image in images]

    async def open(self):
        return await asyncio.open_connection(self.host, self.port)

    async def reopen(self, state):
        await self.close(state)
        return await self.open()

    async def close(self, state):
        state[1].close()

    async def __call__(self, state, i: int) -> None:
        reader, writer = state
        writer.write(self.requests[i % len(self.requests)])
        await writer.drain()
        status = await _read_response(reader)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")


class _V2Triton:
    """tritonclient's asyncio HTTP client, one per worker; inputs built once per image."""

    def __init__(self, url: str, images: list[bytes], tasks: list[str]):
        import numpy as np  # tritonclient (dev extra): only this benchmark's /v2 side needs it
        import tritonclient.http.aio as triton

        self.triton = triton
        self.url = url.removeprefix("http://")
        self.inputs = []
        for image in images:
            tensor = triton.InferInput("IMAGE", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([image], dtype=np.object_), binary_data=True)
            self.inputs.append(tensor)
        self.outputs = [triton.InferRequestedOutput(f"{task}/LABELS", binary_data=True) for task in tasks]

    async def open(self):
        return self.triton.InferenceServerClient(self.url, conn_limit=1)

    async def reopen(self, state):
        return state

    async def close(self, state):
        await state.close()

    async def __call__(self, client, i: int) -> None:
        await client.infer("_all", [self.inputs[i % len(self.inputs)]], outputs=self.outputs,
                           parameters={"top_k": 1})


def run_protocols_bench(*, backbone_name: str = "vit_tiny_patch16_224", tasks: int = 19, concurrency: int = 16,
                        duration: float = 30.0, rounds: int = 3, max_batch_size: int | None = None,
                        max_queue_delay_ms: float = 5.0, image_size: int = 256) -> dict:
    max_batch_size = max_batch_size or max(1, concurrency // 2)
    backbone = create_backbone(backbone_name, weights="random:0")
    images = _jpeg_images(max(64, 4 * concurrency), image_size)
    with tempfile.TemporaryDirectory(prefix="restune-bench-v2-") as tmp:
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
                protocols = {"v1_multipart": _V1Multipart(url, images), "v2_tritonclient": _V2Triton(url, images, names)}
                for send in protocols.values():  # warm-up, both paths
                    asyncio.run(_window(url, concurrency, min(3.0, duration / rounds), send))
                windows: dict[str, list[dict]] = {name: [] for name in protocols}
                load_before = os.getloadavg()  # the cores are shared: how busy the machine was is part of the result
                for _ in range(rounds):
                    for name, send in protocols.items():
                        windows[name].append(asyncio.run(_window(url, concurrency, duration / rounds, send)))
                load_after = os.getloadavg()
            finally:
                stop_server(proc, timeout=20)
    results = {name: _summarize_load(w) for name, w in windows.items()}
    for name, result in results.items():
        ok = result["requests_ok"]
        cpu = sum(w["client_cpu_s"] for w in windows[name])
        result["client_cpu_ms_per_request"] = round(cpu / ok * 1000, 3) if ok else None
    v1, v2 = results["v1_multipart"]["throughput_rps"], results["v2_tritonclient"]["throughput_rps"]
    payload = machine_info("cpu")
    payload.update(
        benchmark="v2",
        config={"backbone": backbone_name, "weights": "random:0", "tasks": tasks, "concurrency": concurrency,
                "duration_s_per_protocol": duration, "rounds": rounds, "max_batch_size": max_batch_size,
                "max_queue_delay_ms": max_queue_delay_ms, "feature_cache": "off",
                "image": f"{image_size}x{image_size} JPEG, distinct per request, the same set for both",
                "v1": "POST /v1/classify multipart (file, top_k=1), every task; pre-encoded, minimal HTTP/1.1 client",
                "v2": "tritonclient.http.aio infer on _all, IMAGE BYTES [1] binary, top_k=1, every TASK/LABELS "
                      "output binary"},
        protocols=results,
        load_average_1m={"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        throughput_ratio_v2_over_v1=round(v2 / v1, 4) if v1 else None,
        target=0.95,
    )
    return payload


def protocols_result(payload: dict, backbone: str, concurrency: int) -> BenchResult:
    lines = []
    for name, r in payload["protocols"].items():
        lines.append(f"{name}: {r['throughput_rps']} req/s, latency {r['latency_ms']}, mean batch "
                     f"{r['mean_batch_size']}, errors {r['errors'] or 'none'}, client {r['client_cpu_ms_per_request']} "
                     "ms CPU per request")
    ratio = payload["throughput_ratio_v2_over_v1"]
    lines.append(f"throughput /v2 (tritonclient) / /v1 (multipart): {ratio} (target >= {payload['target']})")
    passed = ratio is not None and ratio >= payload["target"] and not any(
        r["errors"] for r in payload["protocols"].values())
    return BenchResult(f"v2-vs-v1-{backbone}-c{concurrency}-{device_slug('cpu')}", payload, "\n".join(lines),
                       passed=passed)
