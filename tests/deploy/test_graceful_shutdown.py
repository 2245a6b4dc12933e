"""SIGTERM to a real `restune serve` under classify load drains it: the sequence a Kubernetes pod goes through.

Two replicas on one file store; classify load goes through a ReadinessBalancer (tests/deploy/balancer.py), which
plays the Service: it sends only to replicas whose /readyz is 200 and moves on when a connection is refused.
Replica A then gets SIGTERM, with the drain delay and timeout the committed manifests configure, while:

- classify requests written straight to A just before wait in A's batch queue (a 300 ms batching delay keeps
  them there),
- a classify request to A is half sent, so it is in flight when A closes its listening socket,
- and, after the signal, new connections are opened straight to A.

Required: /readyz is 503 from the first request after the signal; every request that reached A, in flight,
queued or on a new connection right after the signal, gets a 200, and those after the signal say
`Connection: close`; after the delay new connections are refused, while the half-sent request still completes
with a 200; A exits 0 within the time the grace period leaves after the preStop sleep; and the balanced load has
zero failed requests, with B taking the new connections.
"""
from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import pytest

from tests.deploy.balancer import BalancedLoad, ReadinessBalancer
from tests.deploy.procs import wait_until
from tests.deploy.replicas import RawRequest, manifest_drain, replica, sigterm, start_together
from tests.helpers import make_artifact, png_bytes

pytestmark = pytest.mark.e2e


@pytest.fixture
def file_store(tmp_path, micro_backbone) -> str:
    from tuner_store.urls import open_store

    url = f"file://{tmp_path / 'store'}"
    with open_store(url) as store:
        for i, name in enumerate(["alpha", "beta"]):
            store.put(make_artifact(micro_backbone, name, seed=i))
    return url


def classify_body(seed: int) -> dict:
    return {"image": base64.b64encode(png_bytes(seed)).decode(), "top_k": 1}


def connection_refused(port: int) -> bool:
    """Whether a new TCP connection to the port is refused. A bare connect, not a request: a request racing the
    listener's close could be cut off, which is exactly what the drain delay keeps balancers from doing."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drains_a_replica_under_load(tmp_path, file_store):
    drain = manifest_drain()
    after_sigterm = drain["grace"] - drain["pre_stop"]  # what the kubelet leaves the process after preStop
    # a 300 ms batching delay and batches of up to 64: requests wait in the queue, not only in the model
    a = replica(file_store, tmp_path, "--max-queue-delay-ms", "300", "--max-batch-size", "64")
    b = replica(file_store, tmp_path)
    balancer = ReadinessBalancer()
    load = None
    try:
        start_together([a, b])
        for server in (a, b):
            balancer.add(server.url)
        wait_until(lambda: len(balancer.ready()) == 2, 30, what="both replicas ready")
        load = BalancedLoad(balancer, png_bytes(1), threads=2).start()
        wait_until(lambda: load.count(a.url) >= 5 and load.count(b.url) >= 5, 60, what="load on both replicas")

        # in flight when A stops listening: half a request; queued when the signal comes: whole requests that
        # wait up to 300 ms for their batch
        half_sent = RawRequest(a.port, json.dumps(classify_body(7)).encode(), whole=False)
        queued = [RawRequest(a.port, json.dumps(classify_body(100 + i)).encode()) for i in range(8)]
        signalled = sigterm(a)
        not_yet_answered = sum(not r.answered_yet() for r in queued)

        first_ready = httpx.get(f"{a.url}/readyz", timeout=10)
        assert first_ready.status_code == 503, first_ready.text
        assert "shutting down" in first_ready.json()["error"] and first_ready.headers["connection"] == "close"

        # a new connection right after the signal is still served (balancers have not caught up yet) and told to
        # close; then the listening socket closes and new connections are refused, while the half-sent request
        # keeps A running
        late = httpx.post(f"{a.url}/v1/classify", json=classify_body(3), timeout=30)
        assert late.status_code == 200 and late.headers["connection"] == "close", late.text
        wait_until(lambda: connection_refused(a.port), after_sigterm, interval=0.02, what="A refusing connections")
        assert a.proc.poll() is None

        status, headers, answer = half_sent.finish()
        assert status == 200, answer
        assert headers.get("connection") == "close"
        assert set(json.loads(answer)["results"]) == {"alpha", "beta"}

        a.proc.wait(timeout=max(1.0, after_sigterm - (time.monotonic() - signalled)))
        exited_after = time.monotonic() - signalled
        assert a.proc.returncode == 0, a.log()[-3000:]
        assert exited_after < after_sigterm

        answers = [r.finish() for r in queued]
        assert [status for status, _, _ in answers] == [200] * 8, answers
        assert not_yet_answered > 0  # some of them really were waiting when the signal came

        # the balanced load carries on through B alone
        served_by_b = load.count(b.url)
        wait_until(lambda: load.count(b.url) >= served_by_b + 10, 30, what="B serving after A exited")
    finally:
        if load is not None:
            load.stop()
        balancer.close()
        for server in (a, b):
            server.stop()
    assert load.failures == [], load.failures
    assert "Cancel" not in a.log()  # nothing was cut off by the drain timeout
