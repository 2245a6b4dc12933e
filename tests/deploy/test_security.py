"""Hostile input and the server's guards: admin token, pickle, image bombs, body limits, URLs, names, CORS, leaks.

Static checks read the source (AST); behaviour runs the real app in-process on a real file store.  The same
failure cases against a real uvicorn process are in test_fuzz.py.
"""
from __future__ import annotations

import asyncio
import base64
import inspect
import struct
import zlib

import httpx
import pytest

from tests.deploy import scans
from tests.helpers import make_artifact, png_bytes, server_settings

TOKEN = "security-test-token"
LEAKS = ("Traceback", "/work/", "site-packages", 'File "', ".py\"", "/tmp/")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(coro):
    return asyncio.run(coro)


def assert_clean_error(response: httpx.Response, status: int | tuple[int, ...], *also_absent: str) -> dict:
    """A JSON {"error": ...} with the expected status and nothing about the server's insides."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    for needle in (*LEAKS, *also_absent):
        assert needle not in response.text, (needle, response.text)
    return body


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with one tiny compressed row: a bomb by declaration."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def png_bomb(side: int) -> bytes:
    """A complete, valid 1-bit PNG of side x side black pixels: a few KiB that decode to side² pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * side, 9))
            + chunk(b"IEND", b""))


@pytest.fixture
def app_client(store_url, run_app):
    """async with app_client(**settings) as (app, client): the app with an admin token, errors not re-raised."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def _open(**overrides):
        async with run_app(server_settings(store_url, admin_token=TOKEN, **overrides)) as running:
            transport = httpx.ASGITransport(app=running.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield running, client

    return _open


# -- admin token ------------------------------------------------------------------------------------------------


def test_admin_token_is_compared_with_hmac_compare_digest(monkeypatch):
    import hmac

    import server.auth as auth

    source = inspect.getsource(auth.require_admin)
    assert "hmac.compare_digest(" in source
    assert "== admin_token" not in source and "admin_token ==" not in source  # no short-circuiting comparison

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    from starlette.requests import Request

    def request(header: str | None):
        headers = [(b"authorization", header.encode())] if header is not None else []
        return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})

    auth.require_admin(request(f"Bearer {TOKEN}"), TOKEN)
    assert calls == [(TOKEN.encode(), TOKEN.encode())]
    from server.http_errors import APIError

    with pytest.raises(APIError) as wrong:
        auth.require_admin(request(f"Bearer {TOKEN}x"), TOKEN)
    assert wrong.value.status == 403 and len(calls) == 2  # a wrong token is judged by compare_digest too


BAD_AUTH = [
    (None, 401),
    ("", 401),
    ("Bearer", 401),
    ("Bearer ", 401),
    (f"Basic {TOKEN}", 401),
    (f"Token {TOKEN}", 401),
    ("Bearer wrong", 403),
    (f"Bearer {TOKEN[:-1]}", 403),  # a prefix of the token
    (f"Bearer {TOKEN}{TOKEN}", 403),
    (f"Bearer {TOKEN.upper()}", 403),
]


def test_writes_need_the_admin_token(app_client, micro_backbone):
    from tuner_store.artifact import encode_artifact

    async def main():
        async with app_client() as (app, client):
            data = encode_artifact(make_artifact(micro_backbone, "guarded"))
            for header, status in BAD_AUTH:
                headers = {"content-type": "application/octet-stream"}
                if header is not None:
                    headers["authorization"] = header
                assert_clean_error(await client.post("/v1/tuners", content=data, headers=headers), status)
                assert_clean_error(await client.delete("/v1/tuners/alpha", headers=headers), status)
            # a token in the query string is not a token
            assert_clean_error(await client.delete(f"/v1/tuners/alpha?token={TOKEN}&admin_token={TOKEN}"), 401)
            assert "alpha" in app.state.registry.records("classification")
            assert (await client.get("/v1/tuners/guarded")).status_code == 404
            ok = await client.post("/v1/tuners", content=data, headers={
                "content-type": "application/octet-stream", "authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 201, ok.text
            # reads stay open
            assert (await client.get("/v1/tuners")).status_code == 200

    run(main())


# -- no pickle, no fetching ---------------------------------------------------------------------------------------


def test_the_scanner_catches_every_way_to_unpickle():
    bad = {
        "import pickle": "imports pickle",
        "import cPickle as p": "imports cPickle",
        "from pickle import loads": "imports pickle",
        "import dill": "imports dill",
        "import cloudpickle": "imports cloudpickle",
        "from joblib import load": "imports joblib",
        "import torch\ntorch.load('x.pt')": "without weights_only=True",
        "import torch\ntorch.load('x.pt', weights_only=False)": "without weights_only=True",
        "from torch import load": "imports torch.load",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)": "allow_pickle=True",
        "import pandas as pd\npd.read_pickle('x')": "read_pickle",
    }
    for source, expected in bad.items():
        problems = scans.pickle_problems(source)
        assert any(expected in p for p in problems), (source, problems)
    fine = ("import torch\ntorch.load('x.pt', weights_only=True)\nimport numpy as np\nnp.load('x', allow_pickle=False)\n"
            "PICKLE = b'\\x80\\x04\\x95'  # a pickle as data is fine\nx = 'import pickle'\n")
    assert scans.pickle_problems(fine) == []


def test_no_pickle_anywhere_in_the_repository():
    files = scans.python_files()
    assert len(files) > 50 and scans.REPO / "server" / "app.py" in files
    problems = {str(p.relative_to(scans.REPO)): found for p in files
                if (found := scans.pickle_problems(p.read_bytes(), str(p)))}
    assert problems == {}


def test_the_server_never_fetches_urls():
    bad = ["import httpx", "import requests", "from urllib.request import urlopen", "import urllib.request",
           "import urllib\nurllib.request.urlopen('x')", "from urllib import request", "import aiohttp",
           "import http.client"]
    for source in bad:
        assert scans.fetch_imports(source), source
    assert scans.fetch_imports("from urllib.parse import urlsplit") == []

    # the app's modules; bench_*.py are `restune bench` load generators that run in the client's process
    server_files = [p for p in sorted((scans.REPO / "server").glob("*.py")) if not p.name.startswith("bench_")]
    assert len(server_files) >= 8
    found = {p.name: f for p in server_files if (f := scans.fetch_imports(p.read_text(), str(p)))}
    assert found == {}


def test_no_endpoint_takes_a_url(app_client):
    async def main():
        async with app_client() as (app, client):
            spec = (await client.get("/openapi.json")).json()
            text = str(spec).lower()
            for word in ("'url'", "'uri'", "'href'", "'link'", "'format': 'uri'"):
                assert word not in text, word
            for url in ("http://169.254.169.254/latest/meta-data/", "https://example.com/cat.png",
                        "file:///etc/passwd", "//example.com/a.png"):
                r = await client.post("/v1/classify", json={"image": url})
                assert "base64" in assert_clean_error(r, 400)["error"]
                r = await client.post("/v1/classify", files={"file": (None, url)})  # a form field, not a file
                assert_clean_error(r, 400)

    run(main())


# -- images and bodies ----------------------------------------------------------------------------------------------


def dds_with_unknown_pixel_format() -> bytes:
    """A DDS header whose pixel-format flags Pillow does not know: Pillow raises NotImplementedError on it.

    Found by mutation fuzzing of image files (every other mutation of PNG/JPEG/GIF/BMP/TIFF/WEBP/… was refused
    with InputError); before the fix in server/app.py it was a 500.
    """
    pixel_format = struct.pack("<II4sIIIII", 32, 0x18000000, bytes(4), 32, 0xFF0000, 0xFF00, 0xFF, 0xFF000000)
    header = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + bytes(44) + pixel_format + struct.pack("<5I", 0x1000, 0, 0, 0, 0)
    return b"DDS " + header + bytes(64)


def test_images_that_crash_a_decoder_are_400(app_client):
    async def main():
        async with app_client() as (app, client):
            r = await client.post("/v1/classify", json={"image": b64(dds_with_unknown_pixel_format())})
            # DDS is outside restuning.preprocess.ALLOWED_FORMATS now, so its parser is never reached
            assert "not a decodable image" in assert_clean_error(r, 400)["error"]
            r = await client.post("/v1/classify", json={"image": b64(png_bytes(2))})
            assert r.status_code == 200  # and the server is fine

    run(main())


def test_decompression_bombs_and_pixel_limits(app_client):
    async def main():
        async with app_client(max_image_pixels=40_000_000) as (app, client):
            declared = png_header_only(100_000, 100_000)  # 10^10 pixels claimed in 60 bytes
            assert len(declared) < 100
            body = assert_clean_error(await client.post("/v1/classify", json={"image": b64(declared)}), (400, 413))
            assert "pixels" in body["error"] or "DecompressionBomb" in body["error"]

            bomb = png_bomb(7000)  # a real, valid PNG: 49 M pixels in a few KiB
            assert len(bomb) < 20_000
            body = assert_clean_error(await client.post("/v1/classify", files={"file": ("b.png", bomb, "image/png")}),
                                      (400, 413))
            assert "49000000 pixels" in body["error"] and "40000000" in body["error"]

        async with app_client(max_image_pixels=500) as (app, client):
            small = png_bytes(0, size=32)  # 1024 pixels, over this server's limit of 500
            body = assert_clean_error(await client.post("/v1/classify", json={"image": b64(small)}), (400, 413))
            assert "1024 pixels" in body["error"] and "500" in body["error"]
            ok = await client.post("/v1/classify", json={"image": b64(png_bytes(0, size=16))})
            assert ok.status_code == 200, ok.text  # 256 pixels: fine

    run(main())


def test_request_bodies_over_the_limits_are_413(app_client, micro_backbone):
    from tuner_store.artifact import encode_artifact

    async def main():
        async with app_client(max_image_mb=0.01, max_upload_mb=0.002) as (app, client):
            # the classify body limit is the image limit as base64 plus 64 KiB of framing: ~78 KiB here
            big_image = b64(bytes(128 * 1024))
            # declared length over the limit: refused before reading
            assert_clean_error(await client.post("/v1/classify", json={"image": big_image}), 413)

            # no Content-Length (chunked): refused while streaming
            async def chunks():
                for _ in range(128):
                    yield b"A" * 1024

            r = await client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
            assert "limit" in assert_clean_error(r, 413)["error"]
            r = await client.post("/v1/classify", files={"file": ("x.png", bytes(128 * 1024), "image/png")})
            assert_clean_error(r, 413)
            # inside the body limit but over the image limit (0.01 MiB): the image itself is refused
            r = await client.post("/v1/classify", files={"file": ("x.png", bytes(20 * 1024), "image/png")})
            assert "limit" in assert_clean_error(r, 413)["error"]

            auth = {"authorization": f"Bearer {TOKEN}"}
            data = encode_artifact(make_artifact(micro_backbone, "big"))
            assert len(data) > 0.002 * 1024 * 1024
            r = await client.post("/v1/tuners", content=data, headers={**auth, "content-type": "application/octet-stream"})
            assert_clean_error(r, 413)
            r = await client.post("/v1/tuners", files={"file": ("big.safetensors", data)}, headers=auth)
            assert_clean_error(r, 413)
            r = await client.post("/v1/tuners", content=chunks(), headers={**auth, "content-type": "application/octet-stream"})
            assert_clean_error(r, 413)
            assert "big" not in app.state.registry.records("classification")

    run(main())


# -- names ----------------------------------------------------------------------------------------------------------


def test_path_traversal_names_are_refused(app_client, store_url, tmp_path):
    from pathlib import Path

    root = Path(store_url.removeprefix("file://"))
    victim = root.parent / "victim"  # what ../../victim would reach from <root>/tuners/<name>/
    victim.mkdir()
    (victim / "1.safetensors").write_bytes(b"secret")

    async def main():
        async with app_client() as (app, client):
            auth = {"authorization": f"Bearer {TOKEN}"}
            for name in ("..%2F..%2Fvictim", "..%2Fx", "a%2Fb", "%2e%2e", "..", ".hidden", "A", "x@1", "a%00b",
                         "a%5Cb", "x" * 65, "%2Fetc%2Fpasswd"):
                for method, path in (("GET", f"/v1/tuners/{name}"), ("GET", f"/v1/tuners/{name}/artifact?version=1"),
                                     ("DELETE", f"/v1/tuners/{name}?version=1")):
                    r = await client.request(method, path, headers=auth)
                    assert_clean_error(r, (400, 404, 405, 422), str(root))
                    assert b"secret" not in r.content
            assert (victim / "1.safetensors").read_bytes() == b"secret"
            assert sorted(app.state.registry.records("classification")) == ["alpha", "beta", "gamma"]

    run(main())


# -- CORS -----------------------------------------------------------------------------------------------------------


def test_cors_is_off_unless_configured(app_client):
    origin = "https://evil.example"

    async def main():
        async with app_client() as (app, client):
            for r in (await client.get("/v1/tuners", headers={"origin": origin}),
                      await client.options("/v1/classify", headers={"origin": origin,
                                                                     "access-control-request-method": "POST"})):
                assert not any(h.startswith("access-control-") for h in r.headers), dict(r.headers)
        async with app_client(cors_origins=["https://app.example"]) as (app, client):
            r = await client.get("/v1/tuners", headers={"origin": "https://app.example"})
            assert r.headers.get("access-control-allow-origin") == "https://app.example"
            r = await client.get("/v1/tuners", headers={"origin": origin})
            assert "access-control-allow-origin" not in r.headers

    run(main())


# -- no stack traces, no paths ----------------------------------------------------------------------------------------


def test_errors_carry_no_stack_traces_or_internal_paths(app_client, store_url, micro_backbone):
    from restuning.backbones import create_backbone
    from tuner_store.artifact import encode_artifact

    store_path = store_url.removeprefix("file://")
    other = encode_artifact(make_artifact(create_backbone("restune_vit_micro", weights="random:3"), "alpha"))

    async def main():
        async with app_client(max_image_mb=0.5) as (app, client):
            auth = {"authorization": f"Bearer {TOKEN}"}
            octet = {**auth, "content-type": "application/octet-stream"}
            cases = [
                (client.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"}), 422),
                (client.post("/v1/classify", json={"image": "%%%"}), 400),
                (client.post("/v1/classify", json={"image": b64(b"GIF89a" + bytes(40))}), 400),
                (client.post("/v1/classify", json={"image": b64(png_bytes(0)[:60])}), 400),
                (client.post("/v1/classify", json={"image": b64(png_bytes(0)), "tasks": ["../../etc"]}), 404),
                (client.post("/v1/classify", json=[1, 2]), 422),
                (client.post("/v1/classify", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}), 400),
                (client.post("/v1/classify", content=b"{}", headers={"content-type": "application/json", "content-length": "abc"}), 400),
                (client.post("/v1/classify", content=b"x", headers={"content-type": "text/plain"}), 415),
                (client.get("/v1/tuners/nope"), 404),
                (client.get("/v1/tuners/nope/artifact"), 404),
                (client.get("/v1/tuners/alpha?version=99"), 404),
                (client.get("/v1/tuners/alpha?version=-1"), 422),
                (client.delete("/v1/tuners/nope", headers=auth), 404),
                (client.delete("/v1/tuners/alpha?version=7", headers=auth), 404),
                (client.post("/v1/tuners", content=b"\x80\x04\x95junk", headers=octet), 400),
                (client.post("/v1/tuners", content=other, headers=octet), 400),
                (client.post("/v1/tuners", content=bytes(200), headers=octet), 400),
                (client.put("/v1/tuners/alpha"), 405),
                (client.get("/v1/nothing-here"), 404),
                (client.get("/v1/tuners?all_versions=maybe"), 422),
            ]
            for request, status in cases:
                assert_clean_error(await request, status, store_path)

            # an unexpected failure deep inside: 500, a fixed message, nothing of the exception
            async def boom(job):
                raise RuntimeError(f"{store_path}/secret/internal.py exploded")

            app.state.batcher.submit = boom
            r = await client.post("/v1/classify", json={"image": b64(png_bytes(1))})
            assert assert_clean_error(r, 500, store_path, "exploded")["error"] == "internal server error"

    run(main())
