"""A load balancer that follows readiness, standing in for a Kubernetes Service in the deployment tests.

There is no cluster here, so the tests need something that plays the Service (and the ingress in front of it):

- Endpoints follow readiness. A probe thread asks every registered replica's `/readyz` every `probe_interval`
  seconds, like the kubelet's readiness probe; only replicas whose last answer was 200 get requests. A replica is
  registered when its process starts (a pod is created) and removed after it exited (a pod is gone).
- Connections are kept alive per worker thread and replica, as an ingress controller keeps its upstream
  connections, so a replica that shuts down has to deal with clients holding connections to it.
- A connection that cannot be opened (refused) moves on to the next ready replica: nothing was sent, so nothing
  can be applied twice (kube-proxy and ingress-nginx do the same for a failed connect). Any other error, a reset
  or a timeout once the request was sent, is the client's failure and is counted as one; a request is never sent
  twice.

It is more pessimistic than a real Service in one way: Kubernetes removes a terminating pod from the endpoints
as soon as the pod is deleted, while here a replica leaves only when the probe sees its 503 after SIGTERM. So
these tests rely on the server itself (readiness 503 at once, still serving during its drain delay), not on the
balancer's head start.
"""
from __future__ import annotations

import base64
import itertools
import threading
import time
from collections import Counter

import httpx


class NoReadyReplica(Exception):
    pass


class ReadinessBalancer:
    def __init__(self, *, probe_interval: float = 0.2):
        self.probe_interval = probe_interval
        self._ready: dict[str, bool] = {}  # url -> its last readiness answer was 200
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._local = threading.local()
        self._stop = threading.Event()
        self._prober = threading.Thread(target=self._probe_forever, name="balancer-probe", daemon=True)
        self._prober.start()

    # -- endpoints -------------------------------------------------------------------------------

    def add(self, url: str) -> None:
        with self._lock:
            self._ready.setdefault(url, False)

    def remove(self, url: str) -> None:
        with self._lock:
            self._ready.pop(url, None)

    def ready(self) -> list[str]:
        with self._lock:
            return [url for url, ok in self._ready.items() if ok]

    def _probe_forever(self) -> None:
        with httpx.Client(timeout=1.0) as client:
            while not self._stop.is_set():
                with self._lock:
                    urls = list(self._ready)
                for url in urls:
                    try:
                        ok = client.get(f"{url}/readyz", headers={"connection": "close"}).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with self._lock:
                        if url in self._ready:
                            self._ready[url] = ok
                self._stop.wait(self.probe_interval)

    def close(self) -> None:
        self._stop.set()
        self._prober.join(timeout=10)

    # -- requests --------------------------------------------------------------------------------

    def _client(self, url: str) -> httpx.Client:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if url not in clients:
            clients[url] = httpx.Client(base_url=url, timeout=30.0)
        return clients[url]

    def close_thread_clients(self) -> None:
        for client in getattr(self._local, "clients", {}).values():
            client.close()
        self._local.clients = {}

    def request(self, method: str, path: str, **kwargs) -> tuple[str, httpx.Response]:
        """(the replica that answered, its response); a refused connection tries the next ready replica."""
        refused: list[str] = []
        while True:
            candidates = [url for url in self.ready() if url not in refused]
            if not candidates:
                raise NoReadyReplica(f"no ready replica left to try (refused: {refused})")
            url = candidates[next(self._turn) % len(candidates)]
            try:
                return url, self._client(url).request(method, path, **kwargs)
            except httpx.ConnectError:
                refused.append(url)


class BalancedLoad:
    """Threads sending classify requests through a ReadinessBalancer until stopped; every outcome is counted."""

    def __init__(self, balancer: ReadinessBalancer, image: bytes, *, threads: int = 2, pause: float = 0.05):
        self.balancer = balancer
        self.body = {"image": base64.b64encode(image).decode(), "top_k": 1}
        self.threads = threads
        self.pause = pause
        self.served: Counter = Counter()  # replica url -> 200s it answered
        self.failures: list[str] = []  # every request that did not end in a 200, and why
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    url, r = self.balancer.request("POST", "/v1/classify", json=self.body)
                    failure = None if r.status_code == 200 else f"{url} {r.status_code}: {r.text[:200]}"
                except (httpx.HTTPError, NoReadyReplica) as exc:
                    url, failure = None, repr(exc)
                with self._lock:
                    if failure is None:
                        self.served[url] += 1
                    else:
                        self.failures.append(failure)
                time.sleep(self.pause)
        finally:
            self.balancer.close_thread_clients()

    def start(self) -> "BalancedLoad":
        for i in range(self.threads):
            worker = threading.Thread(target=self._work, name=f"balanced-load-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)

    def count(self, url: str | None = None) -> int:
        with self._lock:
            return self.served[url] if url else sum(self.served.values())
