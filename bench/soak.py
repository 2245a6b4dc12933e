"""`restune bench soak`: a real server under a steady mixed load for a long time; errors and memory over time.

One run: start `restune serve` as a subprocess on a free loopback port (a fresh local store, or the store URL
given), fill it with stable tuners, then for warm-up + duration seconds send operations at a fixed rate, open
loop (an operation is due at t0 + k / rate whether or not earlier ones have answered):

- classify (most of the load): every loaded task, or a few of the stable tasks, on one of a pool of distinct
  images (more images than the feature cache holds, so the cache stays full and keeps evicting);
- upload / delete (the `--write-fraction`): a few churn tuners are uploaded as new versions and deleted again,
  in turn, through the HTTP API with the admin token, so the server keeps loading and dropping tuners (with
  `--fresh-names`, every upload after a delete takes a name never used before).

Every answer that is not the expected 2xx is an error. The server process's RSS (and threads, open files, the
feature cache's size) is sampled every `--sample-interval` seconds. Memory is judged on the measured part only
(after warm-up): the least-squares slope of RSS over it, times its length, may be at most `--rss-growth-mb`, and
its peak may exceed its start by at most `--rss-cap-mb`. Latency: classify p99 of the last window (10 minutes, or a
third of a shorter run) may be at most `--latency-ratio` times the first's. At the end the tuners the server
reports must be the stable ones plus the churn ones currently stored.
"""
from __future__ import annotations

import asyncio
import base64
import os
import random
import shlex
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import matplotlib
import psutil

from bench.common import device_slug, machine_info
from bench.results import BenchResult
from bench.serve import _jpeg_images, _wait_ready, free_port, stop_server
from bench.soak_config import SoakConfig
from restuning.backbones import create_backbone
from restuning.bypass import BypassConfig, build_bypass
from tuner_store.artifact import classification_artifact, encode_artifact
from tuner_store.urls import open_store

CLASSIFY, UPLOAD, DELETE = "classify", "upload", "delete"


@dataclass
class _Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {CLASSIFY: [], UPLOAD: [], DELETE: []})
    classify_timed: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, latency)
    errors: Counter = field(default_factory=Counter)  # "classify 503", "upload ReadTimeout", …
    examples: dict[str, str] = field(default_factory=dict)  # first answer of each kind of error
    lateness: list[float] = field(default_factory=list)  # seconds each operation started after it was due

    def error(self, key: str, detail: str) -> None:
        self.errors[key] += 1
        self.examples.setdefault(key, detail[:300])


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    return {"count": len(ordered), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


class _Artifacts:
    """Artifact bytes per (name, seed): the heads are built once per seed, and encoded once per name."""

    def __init__(self, backbone, seeds: list[int], num_classes: int = 5):
        self.backbone = backbone
        self.num_classes = num_classes
        self.heads = {seed: build_bypass(BypassConfig.create(backbone.info, num_classes=num_classes),
                                         backbone.embed_dim, seed=seed) for seed in seeds}
        self.cache: dict[tuple[str, int], bytes] = {}

    def get(self, name: str, seed: int, *, keep: bool = True) -> bytes:
        blob = self.cache.get((name, seed))
        if blob is None:
            labels = [f"{name}-{k}" for k in range(self.num_classes)]
            blob = encode_artifact(classification_artifact(name, self.heads[seed], labels, self.backbone, {}))
            if keep:
                self.cache[(name, seed)] = blob
        return blob


class _Churn:
    """The churn tuners' state as this client knows it; writes go one at a time, in order, so it stays exact.

    Slot i holds one tuner at a time: uploaded (a new version each time: the content alternates), then deleted.
    With `fresh`, each upload after a delete names the slot's tuner anew (soak-churn-I-gN)."""

    def __init__(self, names: list[str], artifacts: _Artifacts, seeds: list[int], fresh: bool = False):
        self.slots = list(names)
        self.artifacts = artifacts
        self.seeds = seeds
        self.fresh = fresh
        self.generation = Counter()  # slot -> names used so far (fresh names only)
        self.present: set[str] = set()
        self.uploads = Counter()  # name -> uploads so far (picks the next blob: new content, so a new version)
        self.turn = 0

    def current(self, i: int) -> str:
        base = self.slots[i]
        return f"{base}-g{self.generation[i]}" if self.fresh else base

    def next_write(self) -> tuple[str, str, bytes | None]:
        i = self.turn % len(self.slots)
        self.turn += 1
        name = self.current(i)
        if name in self.present:
            return DELETE, name, None
        seed = self.seeds[self.uploads[name] % len(self.seeds)]
        return UPLOAD, name, self.artifacts.get(name, seed, keep=not self.fresh)

    def deleted(self, name: str) -> None:
        self.present.discard(name)
        if self.fresh:
            i = next(i for i in range(len(self.slots)) if self.current(i) == name)
            self.generation[i] += 1
            self.uploads.pop(name, None)


async def _drive(url: str, token: str, cfg: SoakConfig, bodies: list[dict], stable: list[str], churn: _Churn,
                 stats: _Stats, stop_at: float, t0: float) -> dict:
    rng = random.Random(cfg.seed)
    auth = {"Authorization": f"Bearer {token}"}
    gate = asyncio.Semaphore(cfg.max_in_flight)
    writes = asyncio.Lock()  # uploads and deletes in the order they were due
    tasks: set[asyncio.Task] = set()
    due_count = 0

    async with httpx.AsyncClient(base_url=url, timeout=60.0,
                                 limits=httpx.Limits(max_connections=cfg.max_in_flight + 4)) as client:

        async def classify(body: dict, wanted: list[str] | None) -> None:
            start = time.perf_counter()
            try:
                r = await client.post("/v1/classify", json=body)
            except httpx.HTTPError as exc:
                stats.error(f"{CLASSIFY} {type(exc).__name__}", repr(exc))
                return
            if r.status_code != 200:
                stats.error(f"{CLASSIFY} {r.status_code}", r.text)
                return
            got = r.json().get("results", {})
            if wanted is not None and sorted(got) != sorted(wanted):
                stats.error(f"{CLASSIFY} wrong tasks", f"asked {wanted}, got {sorted(got)}")
                return
            if wanted is None and not set(stable) <= set(got):
                stats.error(f"{CLASSIFY} missing stable tasks", f"got {sorted(got)}")
                return
            done = time.perf_counter()
            stats.latencies[CLASSIFY].append(done - start)
            stats.classify_timed.append((done - t0, done - start))

        async def write() -> None:
            async with writes:
                kind, name, blob = churn.next_write()
                start = time.perf_counter()
                try:
                    if kind == UPLOAD:
                        r = await client.post("/v1/tuners", content=blob,
                                              headers={**auth, "Content-Type": "application/octet-stream"})
                    else:
                        r = await client.delete(f"/v1/tuners/{name}", headers=auth)
                except httpx.HTTPError as exc:
                    stats.error(f"{kind} {type(exc).__name__}", repr(exc))
                    return
                if r.status_code != (201 if kind == UPLOAD else 200):
                    stats.error(f"{kind} {r.status_code}", r.text)
                    return
                if kind == UPLOAD:
                    churn.present.add(name)
                    churn.uploads[name] += 1
                else:
                    churn.deleted(name)
                stats.latencies[kind].append(time.perf_counter() - start)

        async def run_one(due: float, op) -> None:
            async with gate:
                stats.lateness.append(max(0.0, time.perf_counter() - due))
                await op

        while True:
            due = t0 + due_count / cfg.rate
            if due >= stop_at:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if rng.random() < cfg.write_fraction:
                op = write()
            else:
                body = dict(bodies[rng.randrange(len(bodies))])
                wanted = None
                if rng.random() < 0.5:
                    wanted = rng.sample(stable, k=min(len(stable), rng.randint(1, 3)))
                    body["tasks"] = wanted
                op = classify(body, wanted)
            task = asyncio.get_running_loop().create_task(run_one(due, op))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due_count += 1
        if tasks:
            await asyncio.gather(*tasks)
        return {"scheduled": due_count}


async def _sample_rss(pid: int, url: str, interval: float, stop: asyncio.Event, t0: float, out: list[dict]) -> None:
    """RSS, threads and open files of the server process; and the feature cache's bytes, from /metrics.

    The feature cache fills up to --feature-cache-mb early in a run; its bytes beside RSS tell that growth
    apart from a leak.
    """
    proc = psutil.Process(pid)
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        while not stop.is_set():
            try:
                with proc.oneshot():
                    sample = {"t_s": round(time.perf_counter() - t0, 2),
                              "rss_mb": round(proc.memory_info().rss / 2**20, 2),
                              "threads": proc.num_threads(),
                              "fds": proc.num_fds() if hasattr(proc, "num_fds") else None}
            except psutil.Error:
                return
            try:
                cache = _metric_value((await client.get("/metrics")).text, "restune_feature_cache_bytes")
                sample["feature_cache_mb"] = round(cache / 2**20, 2) if cache is not None else None
            except httpx.HTTPError:
                sample["feature_cache_mb"] = None
            out.append(sample)
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over t."""
    ts, ys = [t for t, _ in points], [y for _, y in points]
    mean_t, mean_y = statistics.fmean(ts), statistics.fmean(ys)
    var_t = sum((t - mean_t) ** 2 for t in ts)
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / var_t if var_t else 0.0


def _memory_verdict(samples: list[dict], warmup: float, growth_mb: float, cap_mb: float) -> dict:
    """Steady when RSS does not trend up after warm-up and never rises far above where it started.

    - growth: the least-squares slope of RSS over the measured run, times the run's length, is at most `growth_mb`.
      A leak or a creep is a slope, whatever its size, and a slope over the whole run sees it however it is
      spread; comparing the peaks of two halves did not (a run still climbing passed by 2.5 MiB).
    - cap: the peak over the measured run is at most `cap_mb` above its start (the median of its first ten
      samples). One burst (a queue that built up while the machine was busy) raises RSS once and the allocator
      keeps those pages; a small one passes, a large one is reported.
    """
    measured = [s for s in samples if s["t_s"] >= warmup]
    if len(measured) < 8:
        return {"measured_samples": len(measured), "steady": None,
                "why": "too few samples after warm-up to judge (run longer or sample more often)"}
    rss = [s["rss_mb"] for s in measured]
    span = measured[-1]["t_s"] - measured[0]["t_s"]
    slope = _slope([(s["t_s"], s["rss_mb"]) for s in measured])  # MiB per second
    start = statistics.median(rss[:10])
    half = len(measured) // 2
    growth = slope * span
    return {
        "measured_samples": len(measured),
        "measured_s": round(span, 1),
        "rss_at_warmup_end_mb": rss[0],
        "rss_start_mb": round(start, 2),
        "rss_end_mb": rss[-1],
        "rss_max_mb": max(rss),
        "feature_cache_end_mb": measured[-1].get("feature_cache_mb"),
        "slope_mb_per_min": round(slope * 60, 3),
        "growth_mb": round(growth, 2),
        "growth_limit_mb": growth_mb,
        "peak_over_start_mb": round(max(rss) - start, 2),
        "cap_mb": cap_mb,
        "second_half_slope_mb_per_min": round(_slope([(s["t_s"], s["rss_mb"]) for s in measured[half:]]) * 60, 3),
        "steady": growth <= growth_mb and max(rss) - start <= cap_mb,
    }


def _latency_verdict(timed: list[tuple[float, float]], warmup: float, duration: float, window: float,
                     ratio: float) -> dict:
    """Classify p99 of the measured run's last window against its first: a server that slows down over hours
    (a growing structure walked per request, fragmentation) shows here before it shows anywhere else."""
    window = min(window, duration / 3)
    if window < 60:
        return {"window_s": round(window, 1), "ok": None, "why": "windows under 60 s are too short to judge p99"}
    end = warmup + duration
    first = [lat for t, lat in timed if warmup <= t < warmup + window]
    last = [lat for t, lat in timed if end - window <= t <= end]
    if len(first) < 100 or len(last) < 100:
        return {"window_s": round(window, 1), "ok": None, "why": "too few requests per window to judge p99"}
    p_first, p_last = _percentiles(first)["p99_ms"], _percentiles(last)["p99_ms"]
    return {"window_s": round(window, 1), "first_window": _percentiles(first), "last_window": _percentiles(last),
            "p99_ratio": round(p_last / p_first, 3), "ratio_limit": ratio, "ok": p_last <= ratio * p_first}


def _plot(samples: list[dict], warmup: float, path: Path, title: str) -> Path | None:
    matplotlib.use("Agg")  # files only, never a window: selected before pyplot loads a GUI backend
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg"), or pyplot would pick a GUI backend

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([s["t_s"] for s in samples], [s["rss_mb"] for s in samples], lw=1.2, label="server RSS")
    cached = [(s["t_s"], s["feature_cache_mb"]) for s in samples if s.get("feature_cache_mb") is not None]
    if cached:
        ax.plot(*zip(*cached), lw=1.0, color="tab:orange", label="of which feature cache (its own count)")
    ax.axvline(warmup, color="grey", ls="--", lw=0.8, label="end of warm-up")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MiB")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _served_tuners(url: str) -> set[str]:
    r = httpx.get(f"{url}/v1/tuners", timeout=30)
    r.raise_for_status()
    return {t["name"] for t in r.json()["tuners"] if t["serving"]}


def run_soak(cfg: SoakConfig) -> dict:
    backbone = create_backbone(cfg.backbone, weights=cfg.weights)
    images = _jpeg_images(cfg.images, cfg.image_size, seed=cfg.seed)
    bodies = [{"image": base64.b64encode(img).decode(), "top_k": 3} for img in images]
    stable = [f"soak-stable-{i:02d}" for i in range(cfg.tasks)]
    churn_names = [f"soak-churn-{i}" for i in range(cfg.churn)]
    seeds = [1000, 1001]
    artifacts = _Artifacts(backbone, seeds)
    token = secrets.token_hex(16)

    with tempfile.TemporaryDirectory(prefix="restune-soak-") as tmp:
        store_url = cfg.store or f"file://{tmp}/store"
        with open_store(store_url) as store:
            for name in store.latest():  # a scratch store: start from a known churn state
                if name.startswith("soak-churn-"):
                    store.delete(name)
            for name in stable:
                store.put(artifacts.get(name, seeds[0]))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        launcher = shlex.split(cfg.server_wrapper) if cfg.server_wrapper else [sys.executable]
        cmd = [*launcher, "-m", "restune", "serve", "--backbone", cfg.backbone, "--weights", cfg.weights,
               "--store", store_url, "--port", str(port), "--device", "cpu", "--log-level", "warning",
               *cfg.server_args]
        log_path = Path(tmp) / "server.log"
        stats = _Stats()
        samples: list[dict] = []
        # the token goes through the environment, so it is not on any command line `ps` shows
        env = {**os.environ, "RESTUNE_ADMIN_TOKEN": token}
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
            try:
                _wait_ready(url, proc, log_path)
                churn = _Churn(churn_names, artifacts, seeds, fresh=cfg.fresh_names)

                async def main() -> dict:
                    stop = asyncio.Event()
                    t0 = time.perf_counter()
                    sampler = asyncio.get_running_loop().create_task(
                        _sample_rss(proc.pid, url, cfg.sample_interval, stop, t0, samples))
                    try:
                        return await _drive(url, token, cfg, bodies, stable, churn, stats,
                                            t0 + cfg.warmup + cfg.duration, t0)
                    finally:
                        stop.set()
                        await sampler

                began = time.perf_counter()
                schedule = asyncio.run(main())
                elapsed = time.perf_counter() - began
                expected = set(stable) | churn.present
                deadline = time.monotonic() + 10  # the last write may still be hot-loading
                served = _served_tuners(url)
                while served != expected and time.monotonic() < deadline:
                    time.sleep(0.1)
                    served = _served_tuners(url)
                metrics_text = httpx.get(f"{url}/metrics", timeout=30).text
            finally:
                stop_server(proc, timeout=30)
        server_log_tail = log_path.read_text(errors="replace")[-3000:]

    memory = _memory_verdict(samples, cfg.warmup, cfg.rss_growth_mb, cfg.rss_cap_mb)
    latency = _latency_verdict(stats.classify_timed, cfg.warmup, cfg.duration, cfg.latency_window,
                               cfg.latency_ratio)
    completed = sum(len(v) for v in stats.latencies.values())
    errors = sum(stats.errors.values())
    late = stats.lateness
    state_ok = served == expected
    payload = machine_info("cpu")
    payload.update(
        benchmark="soak",
        config={
            "backbone": cfg.backbone, "weights": cfg.weights, "store": "file (fresh)" if cfg.store is None else "given",
            "duration_s": cfg.duration, "warmup_s": cfg.warmup, "rate_ops_per_s": cfg.rate,
            "write_fraction": cfg.write_fraction, "stable_tuners": cfg.tasks, "churn_tuners": cfg.churn,
            "fresh_churn_names": cfg.fresh_names, "server_wrapper": cfg.server_wrapper,
            "images": f"{cfg.images} distinct {cfg.image_size}x{cfg.image_size} JPEGs",
            "max_in_flight": cfg.max_in_flight, "sample_interval_s": cfg.sample_interval,
            "server_args": cfg.server_args, "seed": cfg.seed,
            "transport": "HTTP/1.1 on loopback, server in a separate process, open-loop fixed-rate client",
        },
        operations={kind: _percentiles(values) for kind, values in stats.latencies.items()},
        schedule={
            "scheduled": schedule["scheduled"], "completed_ok": completed, "elapsed_s": round(elapsed, 2),
            "achieved_ok_rate": round(completed / elapsed, 3) if elapsed else None,
            "late_over_1s": sum(1 for x in late if x > 1.0),
            "lateness_p99_ms": round(sorted(late)[min(len(late) - 1, int(0.99 * len(late)))] * 1000, 2) if late else None,
        },
        errors={"total": errors, "by_kind": dict(stats.errors), "examples": stats.examples},
        memory=memory,
        latency=latency,
        rss_samples=samples,
        server={
            "threads_first_last": [samples[0]["threads"], samples[-1]["threads"]] if samples else None,
            "fds_first_last": [samples[0]["fds"], samples[-1]["fds"]] if samples else None,
            "hotload_failures": _metric_value(metrics_text, "restune_hotload_failures_total"),
            "rejected_requests": _metric_value(metrics_text, "restune_rejected_requests_total"),
            "log_tail": server_log_tail if errors or not state_ok else None,
        },
        final_tuners={"expected": sorted(expected), "served": sorted(served), "consistent": state_ok},
        passed=bool(errors == 0 and state_ok and memory.get("steady") is not False and latency.get("ok") is not False),
    )
    return payload


def _metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def soak_result(payload: dict, cfg: SoakConfig) -> BenchResult:
    store_kind = "file" if cfg.store is None else cfg.store.partition("://")[0]
    name = f"soak-{cfg.backbone}-{store_kind}-{int(cfg.duration)}s-{device_slug('cpu')}"
    title = f"restune soak: {cfg.backbone}, {cfg.rate:g} ops/s, {cfg.duration:g} s (+{cfg.warmup:g} s warm-up)"
    ops, mem, sched = payload["operations"], payload["memory"], payload["schedule"]
    lines = [f"operations ok: {sched['completed_ok']} of {sched['scheduled']} scheduled in {sched['elapsed_s']} s "
             f"({sched['achieved_ok_rate']} ok/s); classify {ops['classify']}, upload {ops['upload']['count']}, "
             f"delete {ops['delete']['count']}",
             f"errors: {payload['errors']['total']} {payload['errors']['by_kind'] or ''}"]
    if mem.get("steady") is None:
        lines.append(f"memory: not judged ({mem['why']})")
    else:
        lines.append(f"memory: RSS {mem['rss_start_mb']} -> {mem['rss_end_mb']} MiB (max {mem['rss_max_mb']}) over "
                     f"{mem['measured_s']} s; slope {mem['slope_mb_per_min']} MiB/min = {mem['growth_mb']:+} MiB over "
                     f"the run (limit {mem['growth_limit_mb']}), peak {mem['peak_over_start_mb']:+} MiB over the start "
                     f"(cap {mem['cap_mb']}): {'steady' if mem['steady'] else 'GROWING'}")
    lat = payload["latency"]
    if lat.get("ok") is None:
        lines.append(f"latency over time: not judged ({lat['why']})")
    else:
        lines.append(f"latency over time: classify p99 first {lat['window_s']:g} s {lat['first_window']['p99_ms']} ms, "
                     f"last {lat['last_window']['p99_ms']} ms: x{lat['p99_ratio']} (limit x{lat['ratio_limit']}): "
                     f"{'ok' if lat['ok'] else 'SLOWER'}")
    lines.append(f"tuners at the end: {'as expected' if payload['final_tuners']['consistent'] else payload['final_tuners']}")
    lines.append("PASSED" if payload["passed"] else "FAILED")
    return BenchResult(name, payload, "\n".join(lines), passed=payload["passed"],
                       figures={f"{name}.png": lambda p: _plot(payload["rss_samples"], cfg.warmup, p, title) is not None},
                       printed_keys_left_out=("rss_samples",))
