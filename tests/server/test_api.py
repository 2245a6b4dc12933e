"""The HTTP API in-process (httpx ASGI transport), on a tiny backbone and a real file store."""
from __future__ import annotations

import asyncio
import base64

import pytest
import torch

from tests.helpers import MICRO, make_artifact, png_bytes, server_settings


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(coro):
    return asyncio.run(coro)


def test_classify_all_tasks_json_and_multipart(store_url, run_app, micro_backbone):
    async def main():
        async with run_app(server_settings(store_url)) as app:
            image = png_bytes(1)
            r = await app.client.post("/v1/classify", json={"image": b64(image), "top_k": 2})
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body["results"]) == {"alpha", "beta", "gamma"}
            alpha = body["results"]["alpha"]
            assert alpha["tuner"] == "alpha@1" and len(alpha["labels"]) == 2 and len(alpha["scores"]) == 2
            assert alpha["scores"][0] >= alpha["scores"][1]
            assert {"queue", "backbone", "heads"} <= set(body["timings_ms"])

            # the same image as multipart, a subset of tasks: same numbers as a direct engine call
            r2 = await app.client.post("/v1/classify", files={"file": ("x.png", image, "image/png")},
                                       data={"tasks": "beta", "top_k": "5"})
            assert r2.status_code == 200, r2.text
            beta = r2.json()["results"]["beta"]
            assert list(r2.json()["results"]) == ["beta"] and len(beta["labels"]) == 4
            assert r2.json()["timings_ms"]["backbone_images"] == 0  # feature cache hit: no backbone pass

            from restuning.preprocess import ImagePreprocessor, load_image

            pixels = ImagePreprocessor(micro_backbone.info)(load_image(image))
            engine = app.state.runtime.engine
            probs = torch.softmax(engine.classify(pixels[None], ["beta"])["beta"][0], -1)
            top = torch.topk(probs, 4)
            assert beta["labels"] == [f"beta-class{int(i)}" for i in top.indices]
            assert beta["scores"] == pytest.approx([float(s) for s in top.values], abs=1e-5)

    run(main())


def test_concurrent_requests_share_one_backbone_pass(store_url, run_app):
    async def main():
        async with run_app(server_settings(store_url, max_queue_delay_ms=200, max_batch_size=8,
                                           feature_cache_mb=0)) as app:
            images = [png_bytes(10 + i) for i in range(6)]
            responses = await asyncio.gather(*(
                app.client.post("/v1/classify", json={"image": b64(img), "tasks": [["alpha"], ["beta", "gamma"]][i % 2]})
                for i, img in enumerate(images)
            ))
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
            sizes = [r.json()["timings_ms"]["batch_size"] for r in responses]
            assert max(sizes) > 1  # requests were gathered into a batch
            for i, r in enumerate(responses):  # each request got only its own tasks
                assert list(r.json()["results"]) == [["alpha"], ["beta", "gamma"]][i % 2]
            metrics = (await app.client.get("/metrics")).text
            assert "restune_batch_size_count" in metrics

    run(main())


@pytest.mark.parametrize(
    "kwargs, status, needle",
    [
        (dict(json={"image": "!!!not base64"}), 400, "base64"),
        (dict(json={"image": b64(b"definitely not an image")}), 400, "bad image"),
        (dict(json={"image": b64(png_bytes(0)), "tasks": ["nope", "alpha"]}), 404, "nope"),
        (dict(json={"image": b64(png_bytes(0)), "top_k": 0}), 422, "invalid request"),
        (dict(json={"picture": "x"}), 422, "invalid request"),
        (dict(content=b"raw", headers={"content-type": "text/plain"}), 415, "unsupported content type"),
        (dict(files={"other": ("x.png", b"123", "image/png")}), 400, "'file'"),
    ],
)
def test_bad_classify_requests(store_url, run_app, kwargs, status, needle):
    async def main():
        async with run_app(server_settings(store_url)) as app:
            r = await app.client.post("/v1/classify", **kwargs)
            assert r.status_code == status, r.text
            assert needle in r.json()["error"]
            assert "Traceback" not in r.text

    run(main())


def test_oversized_image_is_413(store_url, run_app):
    async def main():
        async with run_app(server_settings(store_url, max_image_mb=0.001)) as app:
            r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(0, size=64) * 3)})
            assert r.status_code == 413 and "limit" in r.json()["error"]

    run(main())


def test_queue_full_is_503_with_retry_after(store_url, run_app):
    async def main():
        async with run_app(server_settings(store_url, max_queue_size=1, max_batch_size=1, max_queue_delay_ms=0,
                                           feature_cache_mb=0)) as app:
            gate = asyncio.Event()
            original = app.state.batcher.run_batch

            def slow(jobs):
                import time

                time.sleep(0.3)
                return original(jobs)

            app.state.batcher.run_batch = slow
            responses = await asyncio.gather(*(
                app.client.post("/v1/classify", json={"image": b64(png_bytes(i))}) for i in range(6)
            ))
            codes = sorted(r.status_code for r in responses)
            assert 503 in codes and 200 in codes
            busy = next(r for r in responses if r.status_code == 503)
            assert busy.headers["retry-after"] == "1" and "overloaded" in busy.json()["error"]
            gate.set()

    run(main())


def test_tuner_crud_and_hot_load(store_url, run_app, micro_backbone):
    from tuner_store.artifact import encode_artifact

    async def main():
        async with run_app(server_settings(store_url)) as app:
            listing = (await app.client.get("/v1/tuners")).json()
            assert [t["name"] for t in listing["tuners"]] == ["alpha", "beta", "gamma"]
            assert all(t["serving"] for t in listing["tuners"])

            data = encode_artifact(make_artifact(micro_backbone, "delta", num_classes=2, seed=9))
            r = await app.client.post("/v1/tuners", content=data, headers={"content-type": "application/octet-stream"})
            assert r.status_code == 201, r.text
            assert r.json()["ref"] == "delta@1"
            await app.wait_for(lambda: "delta" in app.state.registry.records("classification"))
            r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(3)), "tasks": ["delta"]})
            assert r.status_code == 200 and r.json()["results"]["delta"]["tuner"] == "delta@1"

            # a new version via multipart replaces the served one
            data2 = encode_artifact(make_artifact(micro_backbone, "delta", num_classes=2, seed=10))
            r = await app.client.post("/v1/tuners", files={"file": ("delta.safetensors", data2)})
            assert r.status_code == 201 and r.json()["version"] == 2
            await app.wait_for(lambda: app.state.registry.records("classification")["delta"].version == 2)
            detail = (await app.client.get("/v1/tuners/delta")).json()
            assert detail["versions"] == [1, 2] and detail["labels"] == ["delta-class0", "delta-class1"]

            r = await app.client.delete("/v1/tuners/delta")
            assert r.status_code == 200 and r.json()["deleted_versions"] == [1, 2]
            await app.wait_for(lambda: "delta" not in app.state.registry.records("classification"))
            r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(3)), "tasks": ["delta"]})
            assert r.status_code == 404
            assert (await app.client.get("/v1/tuners/delta")).status_code == 404
            assert (await app.client.delete("/v1/tuners/delta")).status_code == 404

    run(main())


def test_bad_uploads_keep_everything_serving(store_url, run_app):
    from restuning.backbones import create_backbone
    from tuner_store.artifact import encode_artifact

    other = create_backbone(MICRO, weights="random:5")

    async def main():
        async with run_app(server_settings(store_url)) as app:
            for body in [b"not safetensors", encode_artifact(make_artifact(other, "alpha"))[:-10],
                         encode_artifact(make_artifact(other, "alpha"))]:
                r = await app.client.post("/v1/tuners", content=body,
                                          headers={"content-type": "application/octet-stream"})
                assert r.status_code == 400, r.text
                assert "invalid artifact" in r.json()["error"]
            r = await app.client.post("/v1/tuners", content=b"x", headers={"content-type": "text/plain"})
            assert r.status_code == 415
            assert app.state.registry.records("classification")["alpha"].version == 1
            r = await app.client.post("/v1/classify", json={"image": b64(png_bytes(0))})
            assert r.status_code == 200 and set(r.json()["results"]) == {"alpha", "beta", "gamma"}

    run(main())


def test_upload_size_limit(store_url, run_app, micro_backbone):
    from tuner_store.artifact import encode_artifact

    async def main():
        async with run_app(server_settings(store_url, max_upload_mb=0.0005)) as app:
            data = encode_artifact(make_artifact(micro_backbone, "big"))
            r = await app.client.post("/v1/tuners", content=data, headers={"content-type": "application/octet-stream"})
            assert r.status_code == 413

    run(main())


def test_admin_token_guards_writes(store_url, run_app, micro_backbone):
    from tuner_store.artifact import encode_artifact

    async def main():
        async with run_app(server_settings(store_url, admin_token="s3cret")) as app:
            data = encode_artifact(make_artifact(micro_backbone, "delta"))
            headers = {"content-type": "application/octet-stream"}
            r = await app.client.post("/v1/tuners", content=data, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            r = await app.client.post("/v1/tuners", content=data, headers={**headers, "authorization": "Bearer nope"})
            assert r.status_code == 403
            r = await app.client.delete("/v1/tuners/alpha", headers={"authorization": "Bearer nope"})
            assert r.status_code == 403
            r = await app.client.post("/v1/tuners", content=data, headers={**headers, "authorization": "Bearer s3cret"})
            assert r.status_code == 201
            # reads stay open
            assert (await app.client.get("/v1/tuners")).status_code == 200

    run(main())


def test_health_ready_metrics(store_url, run_app):
    async def main():
        async with run_app(server_settings(store_url)) as app:
            assert (await app.client.get("/healthz")).json() == {"status": "ok"}
            ready = (await app.client.get("/readyz")).json()
            assert ready["status"] == "ready" and ready["classification_tuners"] == 3
            await app.client.post("/v1/classify", json={"image": b64(png_bytes(0))})
            await app.client.post("/v1/classify", json={"image": b64(png_bytes(0))})
            text = (await app.client.get("/metrics")).text
            for name in ["restune_http_requests_total", "restune_http_request_seconds_bucket", "restune_batch_size",
                         "restune_queue_depth", "restune_feature_cache_hits_total", "restune_loaded_tuners"]:
                assert name in text, name
            assert 'restune_loaded_tuners{kind="classification"} 3.0' in text
            assert "restune_feature_cache_hits_total 1.0" in text

    run(main())


def test_refuses_public_address_without_token():
    from pydantic import ValidationError

    from server.settings import ServerSettings

    with pytest.raises(ValidationError, match="non-loopback"):
        ServerSettings(host="0.0.0.0")
    assert ServerSettings(host="0.0.0.0", admin_token="t").host == "0.0.0.0"
    assert ServerSettings(host="::1").host == "::1"


def test_settings_from_env(monkeypatch):
    from server.settings import ServerSettings

    monkeypatch.setenv("RESTUNE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("RESTUNE_STORE", "redis://127.0.0.1:1/0")
    s = ServerSettings()
    assert s.max_batch_size == 7 and s.store == "redis://127.0.0.1:1/0"
