"""schemathesis against a real `restune serve` process: its own OpenAPI spec (/v1 and /v2), generated requests,
every check on (no 5xx, answers as documented: statuses, content types, headers such as a 405's Allow, response
schemas; schema-valid requests accepted and invalid ones refused, with the exceptions tests/deploy/schemathesis.toml
explains).

Also the hostile-input cases of test_security.py once more through a real uvicorn (its own URL decoding, its
own error pages), checking that no answer leaks a stack trace or a path.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.deploy.procs import wait_until
from tests.deploy.test_security import LEAKS, dds_with_unknown_pixel_format, png_header_only
from tests.helpers import LiveServer, png_bytes

pytestmark = pytest.mark.e2e

TOKEN = "fuzz-test-token"
MAX_EXAMPLES = 25  # per operation and phase: ~1,200 requests in under a minute on the micro backbone
SEED = 8
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def live(tmp_path_factory, micro_backbone):
    from tests.helpers import make_artifact
    from tuner_store.urls import open_store

    root = tmp_path_factory.mktemp("fuzz")
    store_url = f"file://{root / 'store'}"
    with open_store(store_url) as store:
        for i, name in enumerate(["alpha", "beta"]):
            store.put(make_artifact(micro_backbone, name, num_classes=3 + i, seed=i))
    server = LiveServer(store_url, root, extra=["--admin-token", TOKEN, "--max-image-mb", "1"])
    with server:
        yield server, root, str(root / "store")


def test_schemathesis_with_every_check_finds_nothing(live):
    server, root, _ = live
    report_dir = root / "schemathesis"
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{server.url}/openapi.json",
           "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
           # one worker: Hypothesis inspects lambdas with ast.parse, which is not thread-safe on CPython 3.11
           "--workers", "1", "--request-timeout", "30",
           "--header", f"Authorization: Bearer {TOKEN}",
           "--report", "json", "--report-dir", str(report_dir)]
    # cwd: schemathesis and Hypothesis keep caches in the working directory
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    reports = list(report_dir.glob("*.json"))
    assert len(reports) == 1, out.stdout[-3000:] + out.stderr[-2000:]
    report = json.loads(reports[0].read_text())
    summary = f"{out.stdout[-4000:]}\n{out.stderr[-2000:]}"
    assert report["failures"] == [], summary
    assert report["errors"] == [], summary  # schemathesis itself must have run cleanly, or it proved nothing
    assert out.returncode == 0, summary
    assert report["operations"]["tested"] == report["operations"]["selected"] >= 20  # /v1, /v2, health
    assert report["test_cases"]["generated"] >= 20 * MAX_EXAMPLES // 2, report["test_cases"]
    assert "unhandled error" not in server.log() and "Traceback" not in server.log()
    # the server is still whole after all that: both tuners (or what the fuzzer left) answer
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200


def test_hostile_requests_through_uvicorn_leak_nothing(live, micro_backbone):
    from tests.helpers import make_artifact
    from tuner_store.artifact import encode_artifact

    server, _, store_path = live
    auth = {"authorization": f"Bearer {TOKEN}"}
    # the fuzzer may have deleted the seeded tuners; image checks come after "is any tuner loaded?"
    r = httpx.post(f"{server.url}/v1/tuners", content=encode_artifact(make_artifact(micro_backbone, "hostile")),
                   headers={**auth, "content-type": "application/octet-stream"}, timeout=30)
    assert r.status_code == 201, r.text
    wait_until(lambda: httpx.get(f"{server.url}/v1/tuners/hostile", timeout=10).json().get("serving"), 10,
               what="hostile tuner served")
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    cases = [
        ("POST", "/v1/classify", dict(json={"image": "http://169.254.169.254/latest/meta-data/"}), 400),
        ("POST", "/v1/classify", dict(json={"image": b64(png_header_only(100_000, 100_000))}), (400, 413)),
        ("POST", "/v1/classify", dict(json={"image": b64(dds_with_unknown_pixel_format())}), 400),
        ("POST", "/v1/classify", dict(json={"image": b64(bytes(2 * 1024 * 1024))}), 413),
        ("POST", "/v1/classify", dict(content=b"{", headers={"content-type": "application/json"}), 422),
        ("GET", "/v1/tuners/..%2F..%2Fetc%2Fpasswd", {}, (404, 422)),
        ("GET", "/v1/tuners/a%2Fb/artifact", {}, (404, 422)),
        ("GET", "/v1/tuners/nope", {}, 404),
        ("DELETE", "/v1/tuners/..%2Fx", dict(headers=auth), (404, 422)),
        ("DELETE", "/v1/tuners/alpha", dict(headers={"authorization": "Bearer wrong"}), 403),
        ("POST", "/v1/tuners", dict(content=b"\x80\x04junk", headers={**auth, "content-type": "application/octet-stream"}), 400),
        ("PATCH", "/v1/tuners/alpha", {}, 405),
        ("POST", "/v1/generate", dict(json={"prompts": ["a cat"], "styles": ["hostile"]}), (404,)),
        ("POST", "/v2/models/hostile/infer", dict(json={"inputs": []}), 422),
        ("POST", "/v2/models/hostile/infer", dict(content=b"{}garbage", headers={"inference-header-content-length":
                                                                                 "999"}), 400),
        ("POST", "/v2/models/hostile/infer", dict(json={"inputs": [{"name": "IMAGE", "datatype": "BYTES",
                                                                    "shape": [1], "data": ["http://10.0.0.1/x"]}]}), 400),
        ("GET", "/v2/models/..%2F..%2Fetc%2Fpasswd", {}, 404),
        ("POST", "/v2/repository/models/hostile/unload", dict(headers={"authorization": "Bearer wrong"}), 403),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path, kwargs, status in cases:
            r = client.request(method, path, **kwargs)
            statuses = status if isinstance(status, tuple) else (status,)
            assert r.status_code in statuses, (method, path, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/json"), (path, r.headers)
            assert r.json()["error"], (path, r.text)
            for needle in (*LEAKS, store_path):
                assert needle not in r.text, (path, needle, r.text)
        # CORS is off: no Access-Control-* header for any origin, on a simple request or a preflight
        for r in (client.get("/v1/tuners", headers={"origin": "https://evil.example"}),
                  client.options("/v1/classify", headers={"origin": "https://evil.example",
                                                          "access-control-request-method": "POST"})):
            assert not [h for h in r.headers if h.lower().startswith("access-control-")], dict(r.headers)
        # a 405 names every method the path takes (RFC 9110), not only those of the route that matched first
        r = client.patch("/v1/tuners/hostile")
        assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "DELETE"}, r.headers
        ok = client.post("/v1/classify", json={"image": b64(png_bytes(3))})
        assert ok.status_code == 200, ok.text


def test_the_container_healthchecks_probe_a_real_server(live):
    """The HEALTHCHECK of both Dockerfiles and the compose healthcheck, run as written against a live server."""
    import os
    from pathlib import Path

    from tests.deploy import compose as dc
    from tests.helpers import free_port

    server, _, _ = live
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    dead_port = free_port()
    for flavor, path in dc.DOCKERFILES.items():
        final = dc.dockerfile_stages(path)[-1]
        command = dict(final)["HEALTHCHECK"].split(" CMD ", 1)[1]
        for port, healthy in ((server.port, True), (dead_port, False)):
            out = subprocess.run(["sh", "-c", command], env={**env, "RESTUNE_PORT": str(port)}, capture_output=True,
                                 text=True, timeout=30)
            assert (out.returncode == 0) is healthy, (flavor, port, out.stderr[-500:])
    test = dc.load()["services"]["restune-a"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    for port, healthy in ((server.port, True), (dead_port, False)):
        argv = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for arg in test[1:]]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        assert (out.returncode == 0) is healthy, (port, out.stderr[-500:])
