"""Real processes for the deployment tests: a restartable redis-server, background classify load, polling.

`tests/redis_fixture.py` runs one shared Redis without persistence on a random port.  The fault tests need
their own: one they can kill -9 and bring back on the *same* port (the replicas keep their store URL) with
its data (AOF, fsync per write), so the tuners survive the restart as they would in docker-compose.yml.
"""
from __future__ import annotations

import base64
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.helpers import free_port
from tests.redis_fixture import _pong


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; that value, or AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a replica mid-restart refuses connections: keep polling
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout} s" + (f" (last error: {last_exc!r})" if last_exc else ""))


class PersistentRedis:
    """redis-server with AOF (fsync per write) in `workdir`, on a fixed loopback port across restarts."""

    def __init__(self, workdir: Path, *, appendonly: bool = True):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.executable = shutil.which("redis-server") or "redis-server"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 15.0) -> "PersistentRedis":
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
                       else ["--appendonly", "no"])
        with open(self.workdir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--dir", str(self.workdir), *persistence],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{(self.workdir / 'redis.log').read_text()[-2000:]}")
            if _pong(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server not up on port {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown save."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class ClassifyLoad:
    """Background threads sending classify requests to some servers until stopped; every outcome is counted."""

    def __init__(self, urls: list[str], image: bytes, *, tasks: list[str] | None = None, threads_per_url: int = 1,
                 pause: float = 0.02):
        self.urls = urls
        self.body = {"image": base64.b64encode(image).decode(), "top_k": 1}
        if tasks:
            self.body["tasks"] = tasks
        self.threads_per_url = threads_per_url
        self.pause = pause
        self.outcomes: Counter = Counter()  # "200", "503", "ConnectError", …
        self.failures: list[str] = []  # what each non-200 said, for the assertion message
        self.answered: list[tuple[float, float]] = []  # (monotonic time sent, seconds to answer) of each 200
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _worker(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post("/v1/classify", json=self.body)
                    outcome = str(r.status_code)
                    took = time.monotonic() - sent
                    detail = r.text[:300] if r.status_code != 200 else None
                except httpx.HTTPError as exc:
                    outcome, detail = type(exc).__name__, repr(exc)
                with self._lock:
                    self.outcomes[(url, outcome)] += 1
                    if outcome == "200":
                        self.answered.append((sent, took))
                    if detail is not None and len(self.failures) < 20:
                        self.failures.append(f"{url} {outcome}: {detail}")
                time.sleep(self.pause)

    def start(self) -> "ClassifyLoad":
        for url in self.urls:
            for _ in range(self.threads_per_url):
                thread = threading.Thread(target=self._worker, args=(url,), daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def count(self, url: str | None = None, outcome: str | None = None) -> int:
        with self._lock:
            return sum(n for (u, o), n in self.outcomes.items()
                       if (url is None or u == url) and (outcome is None or o == outcome))

    def latencies(self, since: float, until: float) -> list[float]:
        """Seconds to answer of the 200s sent between the two monotonic times."""
        with self._lock:
            return [took for sent, took in self.answered if since <= sent < until]

    def errors(self, url: str | None = None) -> int:
        return self.count(url) - self.count(url, "200")
