"""Faults a server meets in weeks of uptime, each with real processes: a full disk under the file store, clients that
send a byte a second, and many 64 MiB uploads at once. (A Redis that hangs: tests/deploy/test_cluster.py; a process
killed mid-write: tests/tuner_store/test_crash.py; a watcher restarted mid-apply: tests/server/test_watch_restart.py.)

docs/reliability.md describes what each shows.
"""
from __future__ import annotations

import base64
import json
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.deploy.procs import wait_until
from tests.helpers import LiveServer, make_artifact, png_bytes
from tuner_store import encode_artifact, open_store
from tuner_store.file_store import LOG_NAME

pytestmark = pytest.mark.e2e

TOKEN = "fault-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}
CLASSIFY = {"image": base64.b64encode(png_bytes(3)).decode(), "tasks": ["alpha"], "top_k": 1}
BODY_TIMEOUT_S = 10  # the slow-client test lasts this long; a 60 MiB upload arrives well within it
UPLOADS = 8
CONCURRENT_UPLOADS = 2  # the file_server's --max-concurrent-uploads


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A real 640 MiB tmpfs for the file store: it can be filled up for real (mounting needs root, as in CI)."""
    mount = tmp_path_factory.mktemp("disk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def file_server(disk, micro_backbone, tmp_path_factory):
    store = open_store(f"file://{disk / 'store'}")
    store.put(make_artifact(micro_backbone, "alpha", seed=0))
    store.close()
    server = LiveServer(f"file://{disk / 'store'}", tmp_path_factory.mktemp("logs"), extra=[
        "--admin-token", TOKEN, "--body-timeout-s", str(BODY_TIMEOUT_S), "--body-idle-s", "5",
        "--max-concurrent-uploads", str(CONCURRENT_UPLOADS), "--max-queue-delay-ms", "2"])
    server.start()
    wait_until(lambda: httpx.post(f"{server.url}/v1/classify", json=CLASSIFY, timeout=30).status_code == 200, 60,
               what="alpha served")
    yield server
    server.stop()


def classify_latencies(url: str, seconds: float) -> tuple[list[float], list[str]]:
    """Sequential classify requests for `seconds`: latencies (s) of the 200s, and what else was answered."""
    ok, other = [], []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                r = client.post("/v1/classify", json=CLASSIFY)
                (ok.append(time.perf_counter() - start) if r.status_code == 200 else other.append(
                    f"{r.status_code} {r.text[:200]}"))
            except httpx.HTTPError as exc:
                other.append(repr(exc))
    return ok, other


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def test_a_full_disk_answers_507_and_keeps_the_store_whole(file_server, disk, micro_backbone):
    root = disk / "store"
    log_before = (root / LOG_NAME).read_bytes()
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # the disk, full for real
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    blob = encode_artifact(make_artifact(micro_backbone, "late", seed=5))
    try:
        r = httpx.post(f"{file_server.url}/v1/tuners", content=blob, headers=AUTH, timeout=30)
        assert r.status_code == 507, r.text
        assert "full" in r.json()["error"] and r.headers["retry-after"]
        # nothing of it on disk, not even a temporary file; the log unchanged; reads and classify go on
        assert sorted(p.name for p in (root / "tuners").iterdir()) == ["alpha"]
        assert not any(p.name.startswith(".") for p in (root / "tuners" / "alpha").iterdir())
        assert (root / LOG_NAME).read_bytes() == log_before
        assert [t["name"] for t in httpx.get(f"{file_server.url}/v1/tuners", timeout=30).json()["tuners"]] == ["alpha"]
        assert httpx.get(f"{file_server.url}/v1/tuners/alpha/artifact", timeout=30).status_code == 200
        assert httpx.post(f"{file_server.url}/v1/classify", json=CLASSIFY, timeout=30).status_code == 200
    finally:
        filler.unlink()
    r = httpx.post(f"{file_server.url}/v1/tuners", content=blob, headers=AUTH, timeout=30)
    assert r.status_code == 201 and r.json()["ref"] == "late@1", r.text
    body = {**CLASSIFY, "tasks": ["late"]}
    assert httpx.post(f"{file_server.url}/v1/classify", json=body, timeout=30).status_code == 200
    assert httpx.delete(f"{file_server.url}/v1/tuners/late", headers=AUTH, timeout=30).status_code == 200


class SlowClients:
    """`count` connections, each sending a classify request's headers at once and then its body a byte a second;
    what each got back (its status line), or None while it has nothing."""

    def __init__(self, port: int, count: int, body_bytes: int = 4000):
        self.port = port
        self.socks = []
        self.answers: dict[int, str | None] = {}
        self.answered_after: dict[int, float] = {}
        self.body_bytes = body_bytes
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setblocking(False)
            s.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {body_bytes}\r\n\r\n".encode())
            self.socks.append(s)
            self.answers[i] = None
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        sent = 0
        while not self.stop.is_set() and sent < self.body_bytes:
            for i, s in enumerate(self.socks):
                if self.answers[i] is None:
                    try:
                        s.send(b"{" if sent == 0 else b" ")
                    except OSError:  # the server closed it: read what it said
                        pass
            sent += 1
            readable, _, _ = select.select([s for i, s in enumerate(self.socks) if self.answers[i] is None], [], [],
                                           1.0)
            for s in readable:
                i = self.socks.index(s)
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                self.answers[i] = data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
                self.answered_after[i] = time.monotonic() - self.started

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for s in self.socks:
            s.close()


def test_slow_clients_hold_nothing(file_server):
    """100 clients that send their body a byte a second: a normal client is served meanwhile, and each slow one
    gets 408 once the body deadline has passed."""
    slow = SlowClients(file_server.port, 100)
    slow.thread.start()
    try:
        ok, other = classify_latencies(file_server.url, BODY_TIMEOUT_S - 1)
        assert other == [] and len(ok) >= 5, other[:5]
        wait_until(lambda: all(a is not None for a in slow.answers.values()), BODY_TIMEOUT_S + 15,
                   what="every slow client answered")
    finally:
        slow.close()
    assert set(slow.answers.values()) == {"HTTP/1.1 408 Request Timeout"}
    assert max(slow.answered_after.values()) <= BODY_TIMEOUT_S + 10
    metrics = httpx.get(f"{file_server.url}/metrics", timeout=30).text
    assert 'restune_http_requests_total{endpoint="/v1/classify",method="POST",status="408"} 100.0' in metrics


UPLOAD_MIB = 60  # just under the default 64 MiB upload limit


@pytest.fixture(scope="module")
def big_blob(micro_backbone):
    """A real tuner artifact of about 60 MiB: adapters of dim 40,000 on the micro backbone."""
    from restuning.bypass import BypassConfig, build_bypass
    from tuner_store import classification_artifact

    config = BypassConfig.create(micro_backbone.info, num_classes=3, dim=40_000)
    bypass = build_bypass(config, micro_backbone.embed_dim, seed=1)
    blob = encode_artifact(classification_artifact("huge", bypass, ["a", "b", "c"], micro_backbone, {}))
    assert UPLOAD_MIB - 2 <= len(blob) / 2**20 <= 64
    return blob


# A separate process sending N uploads at once: python -c UPLOADER URL TOKEN FILE N; prints the answers as JSON.
UPLOADER = '''
import json, sys, threading, time
import httpx
url, token, path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
blob = open(path, "rb").read()
answers = []
def upload():
    start = time.perf_counter()
    r = httpx.post(url + "/v1/tuners", content=blob, timeout=120,
                   headers={"Authorization": "Bearer " + token, "Content-Type": "application/octet-stream"})
    answers.append([r.status_code, r.headers.get("retry-after"), round(time.perf_counter() - start, 2)])
threads = [threading.Thread(target=upload) for _ in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(answers))
'''

def test_many_big_uploads_while_classifying(file_server, big_blob, tmp_path):
    """8 uploads of a 60 MiB artifact at once while a client classifies. The uploads come from another process at a
    low CPU priority: in production they come from other machines, and here their client's own work (8 threads
    pushing 480 MiB through loopback) would otherwise take the test machine's cores from the server."""
    url = file_server.url
    server = psutil.Process(file_server.proc.pid)
    idle, other = classify_latencies(url, 5)
    assert other == []
    baseline = server.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.01)

    blob_path = tmp_path / "huge.safetensors"
    blob_path.write_bytes(big_blob)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    uploader = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", UPLOADER, url, TOKEN, str(blob_path),
                                 str(UPLOADS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    busy, other = classify_latencies(url, 6)
    out, err = uploader.communicate(timeout=180)
    stop.set()
    sampler.join()
    assert uploader.returncode == 0, err[-2000:]
    answers = json.loads(out)
    size_mib = len(big_blob) / 2**20
    grown_mib = (peak[0] - baseline) / 2**20
    bound_mib = (2 * CONCURRENT_UPLOADS + 4) * size_mib  # docs/reliability.md: what an upload holds, and when
    print(f"idle p99 {p99(idle) * 1000:.0f} ms ({len(idle)}), during uploads p99 {p99(busy) * 1000:.0f} ms "
          f"({len(busy)}); RSS +{grown_mib:.0f} MiB at peak (bound {bound_mib:.0f}); uploads {sorted(answers)}")
    assert other == []
    statuses = [status for status, _, _ in answers]
    # 408: the uploader runs at the lowest CPU priority, and a busy machine can starve it past the body deadline;
    # that is the deadline doing its job, not a fault of the server
    assert set(statuses) <= {201, 503, 408} and 201 in statuses, answers
    assert all(retry for status, retry, _ in answers if status == 503), answers  # told when to come back
    assert grown_mib <= bound_mib  # streamed into one buffer each, validated one at a time: not buffered N times
    # Classify must not wait behind upload work. The measured ratio to idle is printed above and recorded in
    # docs/reliability.md; the assertion is the failure it guards against: validation on the event loop or the
    # batcher's thread made classify p99 1.65 s, 10x idle. A busy CI machine moves the ratio, not that.
    assert len(busy) >= 10 and p99(busy) <= max(2 * p99(idle), 0.5)
    httpx.delete(f"{url}/v1/tuners/huge", headers=AUTH, timeout=30)
