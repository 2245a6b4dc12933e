"""A rolling update, the way the Deployment in deploy/kubernetes does it, with real processes.

Two `restune serve` replicas on one real redis-server, behind a ReadinessBalancer (tests/deploy/balancer.py: it
plays the Service, sending only to replicas whose /readyz is 200). Under classify load, and while tuners are
uploaded through the balancer, each old replica is replaced in turn as `maxSurge: 1, maxUnavailable: 0` does:
start a new replica, wait until it is ready, SIGTERM the old one (it drains with the manifests' delay and
timeout), wait for it to exit. Required: zero failed classify requests, every upload accepted, both old replicas
exit 0 within the grace period, and at the end every replica serves the newest version of every tuner uploaded
before and during the roll.
"""
from __future__ import annotations

import base64
import threading

import httpx
import pytest

from tests.deploy.balancer import BalancedLoad, ReadinessBalancer
from tests.deploy.procs import wait_until
from tests.deploy.replicas import TOKEN, manifest_drain, replica, sigterm, start_together
from tests.helpers import make_artifact, png_bytes

pytestmark = pytest.mark.e2e


class Uploader:
    """Uploads tuners through the balancer one after another until stopped; every answer is kept.

    New versions of a few names rather than ever more names: each upload is hot-loaded by every replica, and
    the set each one serves stays small, so the test measures the roll, not the cost of a growing engine."""

    NAMES = 3

    def __init__(self, balancer: ReadinessBalancer, artifact):
        self.balancer = balancer
        self.artifact = artifact
        self.accepted: list[str] = []  # refs of the tuners the store took
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)

    def _run(self) -> None:
        i = 0
        try:
            while not self._stop.is_set():
                name = f"roll-{i % self.NAMES}"
                try:
                    url, r = self.balancer.request(
                        "POST", "/v1/tuners", content=self.artifact(name, seed=100 + i),
                        headers={"content-type": "application/octet-stream", "authorization": f"Bearer {TOKEN}"})
                    if r.status_code == 201:
                        self.accepted.append(r.json()["ref"])
                    else:
                        self.failures.append(f"{name} via {url}: {r.status_code} {r.text[:200]}")
                except Exception as exc:  # counted: an upload must not fail during the roll
                    self.failures.append(f"{name}: {exc!r}")
                i += 1
                self._stop.wait(0.5)
        finally:
            self.balancer.close_thread_clients()

    def start(self) -> "Uploader":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def served_refs(url: str) -> dict[str, str]:
    """Every classification task a replica answers for, with the version that answers."""
    r = httpx.post(f"{url}/v1/classify", json={"image": base64.b64encode(png_bytes(5)).decode(), "top_k": 1},
                   timeout=30)
    assert r.status_code == 200, r.text
    return {name: result["tuner"] for name, result in r.json()["results"].items()}


def test_rolling_update_under_load_loses_nothing(tmp_path, redis_url, micro_backbone):
    from tuner_store.artifact import encode_artifact
    from tuner_store.urls import open_store

    def artifact(name: str, seed: int) -> bytes:
        return encode_artifact(make_artifact(micro_backbone, name, seed=seed))

    drain = manifest_drain()
    after_sigterm = drain["grace"] - drain["pre_stop"]
    old = [replica(redis_url, tmp_path), replica(redis_url, tmp_path)]
    new = []
    balancer = ReadinessBalancer()
    load = uploader = None
    try:
        start_together(old)
        with httpx.Client(base_url=old[0].url, timeout=30, headers={"authorization": f"Bearer {TOKEN}"}) as admin:
            for i, name in enumerate(["before-a", "before-b"]):
                r = admin.post("/v1/tuners", content=artifact(name, i),
                               headers={"content-type": "application/octet-stream"})
                assert r.status_code == 201, r.text
        for server in old:
            balancer.add(server.url)
            wait_until(lambda: {"before-a", "before-b"} <= set(served_refs(server.url)), 15, what="first tuners")
        wait_until(lambda: len(balancer.ready()) == 2, 30, what="both replicas ready")

        load = BalancedLoad(balancer, png_bytes(2), threads=2).start()
        uploader = Uploader(balancer, artifact).start()
        wait_until(lambda: all(load.count(s.url) >= 5 for s in old), 60, what="load on both old replicas")

        for previous in old:
            successor = replica(redis_url, tmp_path)
            new.append(successor)
            successor.start()  # a new pod; the balancer sends to it once its readiness says so
            balancer.add(successor.url)
            wait_until(lambda: successor.url in balancer.ready(), 60, what="new replica ready")
            sigterm(previous)
            previous.proc.wait(timeout=after_sigterm)
            assert previous.proc.returncode == 0, previous.log()[-3000:]
            balancer.remove(previous.url)  # the pod is gone
            uploads_so_far = len(uploader.accepted)
            wait_until(lambda: len(uploader.accepted) > uploads_so_far, 30, what="uploads continuing")

        wait_until(lambda: all(load.count(s.url) >= 5 for s in new), 60, what="load on both new replicas")
        uploader.stop()
        load.stop()

        # the end state: both new replicas serve the store's newest version of every tuner, those uploaded
        # before the roll and those uploaded while replicas came and went
        with open_store(redis_url) as store:
            expected = {name: record.ref for name, record in store.latest().items()}
        newest = {ref.split("@")[0]: ref for ref in uploader.accepted}  # accepted in order: the last one wins
        assert expected == {"before-a": "before-a@1", "before-b": "before-b@1", **newest}
        for server in new:
            wait_until(lambda: served_refs(server.url) == expected, 15, what=f"{server.url} serving every upload")
    finally:
        for worker in (uploader, load):
            if worker is not None:
                worker.stop()
        balancer.close()
        for server in old + new:
            server.stop()  # a no-op for those that exited; the new ones get stopped only here

    assert load.failures == [], load.failures
    assert uploader.failures == [], uploader.failures
    assert len(uploader.accepted) >= 3, uploader.accepted  # uploads happened throughout the roll

