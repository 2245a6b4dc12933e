"""`restune bench tuners`: a real server holding many tuners, against the same server holding five.

For each pooling rule, a store of N tuners (N = 5 … 2,000) is served by a real `restune serve` process, beside
a baseline server holding 5 tuners; the two take turns under the same load (concurrency C, each request naming k
tasks drawn uniformly or with Zipf popularity, s = 1), so drift in the machine hits both alike. Each N runs
with a resident budget that holds every tuner, and (for the largest N) with one that holds 10% of them: once with the
rest in the host tier (as S-LoRA keeps every adapter in host memory), once with no host tier (every miss is cold).

Reported: throughput vs the baseline, latency p50/p99, what a miss added to a request's answer (the server returns
it as `timings_ms.tuner_load`; the load itself, `tuner_load_total`, runs while the image goes through the backbone)
and the latency of requests that loaded a tuner beside those that did not, put-to-serving
with N tuners loaded (a new version pushed until a request is answered by it), RSS per resident tuner, start to
ready, and, in this process, the engine time of 8 requests naming 3 different tasks each vs the same 3.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import matplotlib
import psutil
import torch

from bench.common import device_slug, interleaved_medians, machine_info
from bench.results import BenchResult
from bench.serve import _jpeg_images, free_port, stop_server
from bench.tuners_config import TunersConfig
from restuning.backbones import create_backbone
from restuning.bypass import BypassConfig, build_bypass
from restuning.engine import MultiTaskEngine
from tuner_store.artifact import classification_artifact, encode_artifact
from tuner_store.urls import open_store

# -- tuners and stores ----------------------------------------------------------------------------------------


def _weights(backbone, pooling: str, count: int) -> list:
    config = BypassConfig.create(backbone.info, num_classes=10, pooling=pooling)
    return [build_bypass(config, backbone.embed_dim, seed=i) for i in range(count)]


def _name(pooling: str, i: int) -> str:
    return f"{pooling}-{i:05d}"


def _fill(store_url: str, backbone, heads: list, pooling: str, start: int, stop: int) -> None:
    store = open_store(store_url)
    labels = [f"c{k}" for k in range(10)]
    for i in range(start, stop):
        store.put(classification_artifact(_name(pooling, i), heads[i % len(heads)], labels, backbone, {}))
    store.close()


def _slot_bytes(backbone, head) -> int:
    engine = MultiTaskEngine(backbone)
    engine.put("x", head)
    return engine.slot_bytes("x")


def _weight_bytes(head) -> int:
    return sum(t.numel() * t.element_size() for t in head.state_dict().values())


# -- servers --------------------------------------------------------------------------------------------------


class Server:
    def __init__(self, backbone: str, store_url: str, resident_mb: float, log_dir: Path, cfg: TunersConfig,
                 host_cache_mb: float = 0.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{self.port}.log"
        self.cmd = [sys.executable, "-m", "restune", "serve", "--backbone", backbone, "--weights", "random:0",
                    "--store", store_url, "--port", str(self.port), "--device", cfg.device, "--feature-cache-mb", "0",
                    "--resident-mb", f"{resident_mb:g}", "--host-cache-mb", f"{host_cache_mb:g}",
                    "--max-batch-size", str(cfg.max_batch_size), "--max-queue-size", str(8 * cfg.concurrency),
                    "--log-level", "warning", *cfg.extra_server_args]

    def start(self) -> float:
        """Start the process; seconds until /readyz answered 200."""
        self._log = open(self.log_path, "w")
        began = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ})
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return time.perf_counter() - began
            except httpx.HTTPError:
                pass
            if time.perf_counter() - began > 600:
                raise RuntimeError("the server was not ready within 600 s")
            time.sleep(0.05)

    def wait_settled(self, timeout: float = 900) -> dict:
        """Until the start-up warm-up is done (resident set, then host tier): a steady server is measured.
        Returns the tuners resident and in the host tier then, and how long after ready that took."""
        began = time.perf_counter()
        deadline = began + timeout
        body: dict = {}
        while time.perf_counter() < deadline:
            body = httpx.get(f"{self.url}/readyz", timeout=10).json()
            if body.get("warm_up") == "done":
                return {"resident": body["resident_tuners"], "host_tier": body["host_tier_tuners"],
                        "seconds_after_ready": round(time.perf_counter() - began, 2)}
            time.sleep(0.25)
        raise RuntimeError(f"the warm-up did not finish within {timeout:.0f} s ({body.get('resident_tuners')} "
                           f"resident, {body.get('host_tier_tuners')} in the host tier)")

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self) -> None:
        stop_server(self.proc, timeout=30)
        self._log.close()


# -- load -----------------------------------------------------------------------------------------------------


def _zipf_pick(rng: random.Random, names: list[str], weights: list[float], k: int) -> list[str]:
    chosen: list[str] = []
    while len(chosen) < k:
        name = rng.choices(names, weights=weights)[0]
        if name not in chosen:
            chosen.append(name)
    return chosen


def _requests(names: list[str], k: int, popularity: str, images: list[bytes], count: int, seed: int) -> list[list]:
    """(image, tasks) for `count` requests; Zipf popularity ranks the names in a shuffled order."""
    rng = random.Random(seed)
    order = names[:]
    rng.shuffle(order)
    weights = [1.0 / (rank + 1) for rank in range(len(order))]
    out = []
    for i in range(count):
        tasks = _zipf_pick(rng, order, weights, k) if popularity == "zipf" else rng.sample(order, k)
        out.append([images[i % len(images)], tasks])
    return out


def _encode(host: str, port: int, image: bytes, tasks: list[str]) -> bytes:
    body = json.dumps({"image": base64.b64encode(image).decode(), "tasks": tasks, "top_k": 1}).encode()
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


async def _read_body(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _window(url: str, requests: list[bytes], concurrency: int, duration: float) -> dict:
    """One load window: C keep-alive connections, each sending its next request as soon as the last is answered."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    loads: list[float] = []
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
                    status, body = await _read_body(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                if status == 200:
                    latencies.append(time.perf_counter() - start)
                    timings = json.loads(body)["timings_ms"]
                    # (what the miss added to the answer, what the load took: mostly beside the backbone pass)
                    loads.append((timings.get("tuner_load", 0.0), timings.get("tuner_load_total")))
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return {"latencies": latencies, "loads": loads, "errors": errors, "elapsed": time.perf_counter() - began}


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _summary(windows: list[dict]) -> dict:
    latencies = [x for w in windows for x in w["latencies"]]
    elapsed = sum(w["elapsed"] for w in windows)
    errors: dict[str, int] = {}
    for w in windows:
        for k, v in w["errors"].items():
            errors[k] = errors.get(k, 0) + v
    # a request that found a tuner not resident says how long making it resident took (tuner_load_total) and how
    # much of that its answer waited for (tuner_load: the load runs while its image goes through the backbone)
    misses = [added for w in windows for added, total in w["loads"] if total is not None]
    loads = [total for w in windows for _, total in w["loads"] if total is not None]
    missed_latency = [lat for w in windows for lat, (_, total) in zip(w["latencies"], w["loads"]) if total is not None]
    hit_latency = [lat for w in windows for lat, (_, total) in zip(w["latencies"], w["loads"]) if total is None]
    requests = sum(len(w["loads"]) for w in windows)
    return {
        "requests_ok": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / elapsed, 3) if elapsed else 0.0,
        "latency_ms": {p: round(_pct(latencies, q) * 1000, 2) if latencies else None
                       for p, q in (("p50", 0.5), ("p99", 0.99))},
        "requests_that_loaded_tuners": len(misses),
        "share_that_loaded": round(len(misses) / requests, 4) if requests else None,
        "cold_miss_added_ms": {p: round(_pct(misses, q), 2) if misses else None
                               for p, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
        "cold_miss_load_ms": {p: round(_pct(loads, q), 2) if loads else None
                              for p, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
        "latency_ms_of_requests_that_loaded": {p: round(_pct(missed_latency, q) * 1000, 2) if missed_latency else None
                                               for p, q in (("p50", 0.5), ("p99", 0.99))},
        "latency_ms_of_requests_that_did_not": {p: round(_pct(hit_latency, q) * 1000, 2) if hit_latency else None
                                                for p, q in (("p50", 0.5), ("p99", 0.99))},
        # what a miss costs end to end, the wait above plus its batch running beside the load: the latency of the
        # requests that loaded minus that of the requests that did not, in the same windows
        "cold_miss_added_end_to_end_ms": {p: round((_pct(missed_latency, q) - _pct(hit_latency, q)) * 1000, 2)
                                          if missed_latency and hit_latency else None
                                          for p, q in (("p50", 0.5), ("p99", 0.99))},
    }


def _compare(baseline: Server, server: Server, base_reqs: list[bytes], reqs: list[bytes], cfg: TunersConfig) -> dict:
    """Baseline and server take turns, `rounds` windows each (the idle one costs nothing meanwhile)."""
    asyncio.run(_window(baseline.url, base_reqs, cfg.concurrency, 2.0))  # warm-up
    asyncio.run(_window(server.url, reqs, cfg.concurrency, 2.0))
    ours, theirs = [], []
    for _ in range(cfg.rounds):
        theirs.append(asyncio.run(_window(baseline.url, base_reqs, cfg.concurrency, cfg.window_s)))
        ours.append(asyncio.run(_window(server.url, reqs, cfg.concurrency, cfg.window_s)))
    server_summary, base_summary = _summary(ours), _summary(theirs)
    ratio = (server_summary["throughput_rps"] / base_summary["throughput_rps"]
             if base_summary["throughput_rps"] else None)
    return {"server": server_summary, "baseline_n5": base_summary,
            "throughput_vs_n5": round(ratio, 4) if ratio is not None else None}


PUT_TIMEOUT_S = 30.0


def _put_to_serving(server: Server, store_url: str, backbone, head_pool: list, pooling: str, name: str,
                    puts: int, image: bytes) -> dict:
    """Seconds from a store put of a new version until a request naming the tuner is answered by it."""
    store = open_store(store_url)
    labels = [f"c{k}" for k in range(10)]
    samples, timed_out = [], 0
    body = {"image": base64.b64encode(image).decode(), "tasks": [name], "top_k": 1}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(puts):
            head = head_pool[(i + 7) % len(head_pool)]
            # unique content: a put identical to an earlier one (an earlier N's) returns that old version
            artifact = classification_artifact(name, head, labels, backbone, {"put": i, "nonce": time.time_ns()})
            data = encode_artifact(artifact)
            latest = store.record(name, "latest").version
            start = time.perf_counter()
            record = store.put(data)
            if record.version <= latest:
                raise RuntimeError(f"the store returned version {record.version} of {name}, not a new one")
            while True:
                r = client.post("/v1/classify", json=body)
                if r.status_code == 200 and r.json()["results"][name]["tuner"] == record.ref:
                    break
                if time.perf_counter() - start > PUT_TIMEOUT_S:  # counted (at the time waited), not fatal
                    timed_out += 1
                    break
                time.sleep(0.005)
            samples.append(time.perf_counter() - start)
    store.close()
    return {"puts": puts, "p50_s": round(statistics.median(samples), 4), "p99_s": round(_pct(samples, 0.99), 4),
            "max_s": round(max(samples), 4), f"not_served_within_{PUT_TIMEOUT_S:.0f}_s": timed_out}


def _cold_miss_probes(server: Server, store_url: str, backbone, head_pool: list, pooling: str, hit_name: str,
                      load: list[bytes], image: bytes, cfg: TunersConfig) -> dict:
    """What a cold miss adds to its answer, under the request load: new tuners are put in the store (not resident,
    not in a host tier: their first request reads, validates and builds them); each is asked for at the same
    moment as a resident tuner, on its own connection, so the two share the server's state and usually one batch.
    The difference of the pair's latencies is what the miss added."""
    store = open_store(store_url)
    labels = [f"c{k}" for k in range(10)]
    names = [f"cold-{pooling}-{i:03d}" for i in range(cfg.cold_probes)]
    for i, name in enumerate(names):
        store.put(encode_artifact(classification_artifact(name, head_pool[(i + 3) % len(head_pool)], labels,
                                                          backbone, {})))
    revision = store.revision()
    store.close()
    deadline = time.perf_counter() + 60
    while httpx.get(f"{server.url}/readyz", timeout=10).json()["store_revision"] < revision:
        if time.perf_counter() > deadline:
            raise RuntimeError("the server did not see the probe tuners within 60 s")
        time.sleep(0.1)
    host, port = server.url.removeprefix("http://").split(":")
    pairs: list[dict] = []

    async def timed(request: bytes) -> tuple[float, dict]:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            start = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status, body = await _read_body(reader)
            elapsed = time.perf_counter() - start
        finally:
            writer.close()
        if status != 200:
            raise RuntimeError(f"a probe got {status}: {body[:300]!r}")
        return elapsed, json.loads(body)["timings_ms"]

    async def probes():
        await asyncio.sleep(1.0)  # the load is running
        for name in names:
            (cold, cold_timings), (hit, _) = await asyncio.gather(timed(_encode(host, int(port), image, [name])),
                                                                  timed(_encode(host, int(port), image, [hit_name])))
            pairs.append({"cold_s": cold, "hit_s": hit, "load_ms": cold_timings.get("tuner_load_total")})
            await asyncio.sleep(0.3)

    async def main():
        await asyncio.gather(_window(server.url, load, cfg.concurrency, 1.5 + 0.9 * len(names)), probes())

    asyncio.run(main())
    store = open_store(store_url)
    for name in names:  # the next runs hold N tuners again
        store.delete(name)
    store.close()
    added = [(p["cold_s"] - p["hit_s"]) * 1000 for p in pairs]
    loads = [p["load_ms"] for p in pairs if p["load_ms"] is not None]
    return {"probes": len(pairs), "store": "file" if store_url.startswith("file:") else "redis",
            "added_ms": {p: round(_pct(added, q), 2) for p, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
            "load_ms": {p: round(_pct(loads, q), 2) for p, q in (("p50", 0.5), ("p99", 0.99))} if loads else None,
            "pairs": [{k: round(v, 4) if isinstance(v, float) else v for k, v in p.items()} for p in pairs]}


def _engine_mix(backbone, head_pool: list, cfg: TunersConfig) -> dict:
    """8 requests naming 3 different tasks each vs 8 naming the same 3 (mean pooling): the heads alone."""
    backbone = backbone.to(cfg.device)
    engine = MultiTaskEngine(backbone)
    names = [f"e{i:03d}" for i in range(cfg.engine_tuners)]
    for i, name in enumerate(names):
        engine.put(name, head_pool[i % len(head_pool)])
    rng = random.Random(cfg.seed)
    images = torch.randn(8, 3, *backbone.info.image_size, generator=torch.Generator().manual_seed(cfg.seed))
    feats = backbone.forward_features(images.to(cfg.device))
    different = [rng.sample(names, 3) for _ in range(8)]
    same = [different[0]] * 8
    medians = interleaved_medians({"different": lambda: engine.run_routed(feats, different),
                                   "same": lambda: engine.run_routed(feats, same)},
                                  repeats=cfg.engine_repeats, warmup=2, device=cfg.device)
    return {"tuners": cfg.engine_tuners, "batch": 8, "tasks_per_request": 3, "median_ms": medians,
            "different_over_same": round(medians["different"] / medians["same"], 4)}


# -- the run --------------------------------------------------------------------------------------------------


def _store_url(cfg: TunersConfig, root: Path, label: str) -> str:
    if cfg.store == "file":
        return f"file://{root / label}"
    import redis  # the redis extra, for a redis:// run only

    redis.Redis.from_url(cfg.store).flushdb()  # a scratch database, as the option says
    return cfg.store


def run_tuners_bench(cfg: TunersConfig, *, progress=print) -> dict:
    backbone = create_backbone(cfg.backbone, weights="random:0")
    images = _jpeg_images(cfg.images, cfg.image_size, seed=cfg.seed)
    results: dict = {"pooling": {}}
    counts = sorted(set(cfg.counts) - {5})
    with tempfile.TemporaryDirectory(prefix="restune-bench-tuners-") as tmp:
        root = Path(tmp)
        for pooling in cfg.poolings:
            heads = _weights(backbone, pooling, cfg.distinct_weights)
            slot, weights = _slot_bytes(backbone, heads[0]), _weight_bytes(heads[0])
            per_pool: dict = {"slot_bytes": slot, "weight_bytes": weights, "runs": []}
            results["pooling"][pooling] = per_pool
            base_url = f"file://{root / f'{pooling}-base'}"
            _fill(base_url, backbone, heads, pooling, 0, 5)
            baseline = Server(cfg.backbone, base_url, 0, root, cfg)
            baseline.start()
            baseline.wait_settled()
            base_names = [_name(pooling, i) for i in range(5)]
            store_url = _store_url(cfg, root, pooling) if cfg.store == "file" else cfg.store
            filled = 0
            try:
                for n in counts:
                    progress(f"{pooling}: {n} tuners in the store")
                    _fill(store_url, backbone, heads, pooling, filled, n)
                    filled = n
                    names = [_name(pooling, i) for i in range(n)]
                    # (label, resident MiB (0: no limit), host cache MiB): every tuner resident; 10% resident with
                    # the rest in the host tier (S-LoRA keeps every adapter in host memory); 10% resident with no
                    # host tier, so that every miss reads and validates the artifact from the store (a cold miss)
                    budgets = [("all", 0.0, 0.0)]
                    if n == max(counts) and cfg.partial_budget:
                        partial = cfg.partial_budget * n * slot / 2**20
                        budgets += [(f"{cfg.partial_budget:.0%}", partial, 1.05 * n * slot / 2**20),
                                    (f"{cfg.partial_budget:.0%}, no host cache", partial, 0.0)]
                    for label, resident_mb, host_cache_mb in budgets:
                        server = Server(cfg.backbone, store_url, resident_mb, root, cfg, host_cache_mb)
                        run = {"tuners": n, "budget": label, "resident_mb": round(resident_mb, 3) or "unlimited",
                               "host_cache_mb": round(host_cache_mb, 3)}
                        run["start_to_ready_s"] = round(server.start(), 3)
                        try:
                            run["settled"] = server.wait_settled()  # measure a steady server
                            if label == "all":
                                run["rss_mb"] = round(server.rss() / 2**20, 1)
                                run["baseline_rss_mb"] = round(baseline.rss() / 2**20, 1)
                                run["rss_per_resident_tuner_bytes"] = round((server.rss() - baseline.rss()) / (n - 5))
                                run["rss_per_tuner_over_weights"] = round(run["rss_per_resident_tuner_bytes"] / weights,
                                                                          3)
                            run["mixes"] = []
                            for k, popularity in cfg.mixes:
                                mix = _requests(names, k, popularity, images, 512, cfg.seed + k)
                                base_mix = _requests(base_names, min(k, 5), popularity, images, 512, cfg.seed + k)
                                host, port = server.url.removeprefix("http://").split(":")
                                bhost, bport = baseline.url.removeprefix("http://").split(":")
                                reqs = [_encode(host, int(port), im, t) for im, t in mix]
                                base_reqs = [_encode(bhost, int(bport), im, t) for im, t in base_mix]
                                progress(f"  {pooling} N={n} budget {label}: k={k} {popularity}")
                                run["mixes"].append({"k": k, "popularity": popularity,
                                                     **_compare(baseline, server, base_reqs, reqs, cfg)})
                            if label == "all" and cfg.puts:
                                run["put_to_serving"] = _put_to_serving(server, store_url, backbone, heads, pooling,
                                                                        names[0], cfg.puts, images[0])
                            if label == "all" and cfg.cold_probes:
                                progress(f"  {pooling} N={n}: {cfg.cold_probes} cold misses under load")
                                run["cold_miss"] = _cold_miss_probes(server, store_url, backbone, heads, pooling,
                                                                     names[0], reqs, images[1 % len(images)], cfg)
                        finally:
                            server.stop()
                        per_pool["runs"].append(run)
            finally:
                baseline.stop()
            if pooling == "avg" or len(cfg.poolings) == 1:
                results["engine_mix"] = _engine_mix(backbone, heads, cfg)
    payload = machine_info(cfg.device)
    payload.update(benchmark="tuners", config={**asdict(cfg), "weights": "random:0", "feature_cache": "off"},
                   **results)
    return payload


def _plot(payload: dict, path: Path) -> None:
    matplotlib.use("Agg")  # files only, never a window: selected before pyplot loads a GUI backend
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg"), or pyplot would pick a GUI backend

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for pooling, data in payload["pooling"].items():
        runs = [r for r in data["runs"] if r["budget"] == "all" and "put_to_serving" in r]
        left.plot([r["tuners"] for r in runs], [r["put_to_serving"]["p99_s"] * 1000 for r in runs], marker="o",
                  label=f"{pooling} pooling")
        for mix_index, (k, popularity) in enumerate(payload["config"]["mixes"]):
            points = [(r["tuners"], r["mixes"][mix_index]["throughput_vs_n5"]) for r in data["runs"]
                      if r["budget"] == "all"]
            right.plot(*zip(*points), marker="o", label=f"{pooling}, k={k} {popularity}")
    left.set(xlabel="tuners in the store (all resident)", ylabel="put-to-serving p99 (ms)", xscale="log",
             title="hot-load does not grow with N")
    right.set(xlabel="tuners in the store (all resident)", ylabel="throughput / N=5 server", xscale="log",
              title="throughput vs the 5-tuner server")
    right.axhline(0.95, color="grey", ls="--", lw=0.8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(payload["device"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tuners_result(payload: dict) -> BenchResult:
    lines = [payload["device"]]
    for pooling, data in payload["pooling"].items():
        lines.append(f"{pooling} pooling: slot {data['slot_bytes']:,} B, weights {data['weight_bytes']:,} B per tuner")
        for run in data["runs"]:
            head = (f"  N={run['tuners']:>5} budget {run['budget']}: start-to-ready {run['start_to_ready_s']} s"
                    + (f", RSS/tuner {run['rss_per_tuner_over_weights']}x weights" if "rss_per_tuner_over_weights"
                       in run else "")
                    + (f", put-to-serving p99 {run['put_to_serving']['p99_s']} s" if "put_to_serving" in run else "")
                    + (f", a cold miss added p50/p99 {run['cold_miss']['added_ms']['p50']}/"
                       f"{run['cold_miss']['added_ms']['p99']} ms" if "cold_miss" in run else ""))
            lines.append(head)
            for mix in run["mixes"]:
                s = mix["server"]
                lines.append(f"    k={mix['k']} {mix['popularity']:>7}: {mix['throughput_vs_n5']}x of N=5, "
                             f"p50/p99 {s['latency_ms']['p50']}/{s['latency_ms']['p99']} ms, loaded in "
                             f"{s['share_that_loaded']} of requests (waited p50/p99 {s['cold_miss_added_ms']['p50']}/"
                             f"{s['cold_miss_added_ms']['p99']} ms, end to end +{s['cold_miss_added_end_to_end_ms']['p50']}/"
                             f"+{s['cold_miss_added_end_to_end_ms']['p99']} ms, load p99 {s['cold_miss_load_ms']['p99']} ms), "
                             f"errors {s['errors'] or 'none'}")
    if "engine_mix" in payload:
        e = payload["engine_mix"]
        lines.append(f"engine, batch 8 x 3 tasks, mean pooling: different / same = {e['different_over_same']}")
    store = "file" if payload["config"]["store"] == "file" else "redis"
    name = f"tuners-{payload['config']['backbone']}-{store}-{device_slug(payload['config']['device'])}"
    return BenchResult(name, payload, "\n".join(lines), figures={f"{name}.png": lambda p: _plot(payload, p)})
