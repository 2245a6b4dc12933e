"""The v2 protocol in-process: the binary codec on its own, the limits and refusals of /v2 infer, batches shared
with /v1, and the repository extension's registry semantics (load, unload, state) on a real file store."""
from __future__ import annotations

import asyncio
import base64
import json
import struct

import numpy as np
import pytest

from server import v2_codec as codec
from tests.helpers import MICRO, make_artifact, png_bytes, server_settings

TOKEN = "v2-api-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def run(coro):
    return asyncio.run(coro)


def image_request(images: list[bytes], **parameters) -> dict:
    body = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(images)],
                        "data": [base64.b64encode(i).decode() for i in images]}]}
    if parameters:
        body["parameters"] = parameters
    return body


def binary_request(tensors: list[tuple[dict, bytes]], **extra) -> tuple[bytes, dict]:
    """A body of the binary tensor data extension, built by hand (the Triton client builds it in test_v2_triton)."""
    header = {"inputs": [{**t, "parameters": {"binary_data_size": len(raw)}} for t, raw in tensors], **extra}
    text = json.dumps(header).encode()
    return text + b"".join(raw for _, raw in tensors), {codec.HEADER_LENGTH: str(len(text)),
                                                         "content-type": "application/octet-stream"}


# -- the codec ---------------------------------------------------------------------------------------------------

def test_bytes_elements_round_trip_and_refuse_bad_lengths():
    items = [b"", b"a", bytes(range(256)) * 3]
    raw = codec.encode_bytes_elements(items)
    assert raw[:4] == struct.pack("<I", 0) and codec.decode_bytes_elements(memoryview(raw), 3, "x") == items
    for broken, words in ((raw[:-1], "says"), (raw + b"\x01", "ends inside"), (raw + struct.pack("<I", 0), "holds 4")):
        with pytest.raises(codec.TensorError, match=words):
            codec.decode_bytes_elements(memoryview(broken), 3, "x")


def test_binary_parts_follow_input_order_and_account_for_every_byte():
    inputs = [{"name": "a", "parameters": {"binary_data_size": 2}}, {"name": "b", "data": [1]},
              {"name": "c", "parameters": {"binary_data_size": 3}}]
    parts = codec.binary_parts(inputs, memoryview(b"xxyyy"))
    assert [bytes(p) if p is not None else None for p in parts] == [b"xx", None, b"yyy"]
    with pytest.raises(codec.TensorError, match="after the last binary input"):
        codec.binary_parts(inputs, memoryview(b"xxyyyz"))
    with pytest.raises(codec.TensorError, match="runs past the end"):
        codec.binary_parts(inputs, memoryview(b"xxyy"))
    with pytest.raises(codec.TensorError, match="byte count"):
        codec.binary_parts([{"name": "a", "parameters": {"binary_data_size": True}}], memoryview(b"x"))


def test_numeric_tensors_check_count_type_and_range():
    tensor = {"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 1, 3], "data": [[[[0, 1, 2]], [[3, 4, 255]]]]}
    array = codec.numeric_tensor(tensor, None)
    assert array.dtype == np.uint8 and array.shape == (1, 2, 1, 3) and array.reshape(-1).tolist()[-1] == 255
    assert codec.numeric_tensor({**tensor, "data": None}, memoryview(array.tobytes())).tolist() == array.tolist()
    for data, words in (([0, 1, 2, 3, 4, 256], r"lie in \[0, 255\]"), ([0, 1, 2, 3, 4], "holds 6 elements"),
                        ([0, 1, 2, 3, 4, 1.5], "integers"), ([0, 1, 2, 3, 4, True], "integers"),
                        ([0, 1, 2, 3, 4, {"a": 1}], "holds dict")):
        with pytest.raises(codec.TensorError, match=words):
            codec.numeric_tensor({**tensor, "data": data}, None)
    with pytest.raises(codec.TensorError, match="is 6 bytes"):
        codec.numeric_tensor(tensor, memoryview(b"12345"))


def test_outputs_and_responses_in_json_and_binary():
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    header, raw = codec.output_tensor("P", "FP32", [1, 2], probs, binary=False)
    assert header == {"name": "P", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]} and raw is None
    header, raw = codec.output_tensor("L", "BYTES", [1, 1], ["été".encode()], binary=True, parameters={"t": "x"})
    assert header["parameters"] == {"t": "x", "binary_data_size": 4 + len("été".encode())} and "data" not in header
    body, extra, kind = codec.encode_response({"outputs": [header]}, [raw])
    length = int(extra[codec.HEADER_LENGTH])
    assert kind == codec.BINARY_CONTENT_TYPE and json.loads(body[:length]) == {"outputs": [header]}
    assert codec.decode_bytes_elements(memoryview(body[length:]), 1, "L") == ["été".encode()]


# -- /v2 infer in-process ----------------------------------------------------------------------------------------

def test_infer_refuses_what_v1_refuses_with_the_same_answers(store_url, run_app):
    async def main():
        settings = server_settings(store_url, max_image_mb=0.05, max_image_pixels=50 * 50, max_queue_size=3)
        async with run_app(settings) as app:
            post = app.client.post
            ok = await post("/v2/models/alpha/infer", json=image_request([png_bytes(1)]))
            assert ok.status_code == 200, ok.text

            async def refused(status, words, *args, **kwargs):
                r = await post(*args, **kwargs)
                assert r.status_code == status and words in r.json()["error"], r.text

            too_big = bytes(60_000)
            await refused(413, "the limit is", "/v2/models/alpha/infer", json=image_request([too_big]))
            await refused(413, "at most 3 per request", "/v2/models/alpha/infer",
                          json=image_request([png_bytes(i) for i in range(4)]))
            await refused(413, "the request body is", "/v2/models/alpha/infer", content=b"{" + b" " * 200_000,
                          headers={"content-type": "application/json"})
            await refused(400, "image is 60x60 = 3600 pixels; the limit is 2500", "/v2/models/alpha/infer",
                          json=image_request([png_bytes(2, size=60)]))
            pixels = {"name": "PIXELS", "datatype": "UINT8", "shape": [1, 60, 60, 3]}
            await refused(400, "the limit is 2500", "/v2/models/alpha/infer",
                          json={"inputs": [{**pixels, "data": [0] * (60 * 60 * 3)}]})
            await refused(400, "image 0: bad image", "/v2/models/alpha/infer", json=image_request([b"GIF89a junk"]))
            await refused(400, "not valid base64", "/v2/models/alpha/infer",
                          json={"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]})
            await refused(400, "exactly one input", "/v2/models/alpha/infer",
                          json={"inputs": [image_request([png_bytes(1)])["inputs"][0], {**pixels, "data": []}]})
            await refused(400, "must be BYTES", "/v2/models/alpha/infer",
                          json={"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1], "data": [1]}]})
            await refused(415, "unsupported content type", "/v2/models/alpha/infer", content=b"{}",
                          headers={"content-type": "text/plain"})
            await refused(415, "uncompressed", "/v2/models/alpha/infer", content=b"{}",
                          headers={"content-type": "application/json", "content-encoding": "gzip"})
            await refused(422, "invalid inference request", "/v2/models/alpha/infer",
                          json={"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": ["1"], "data": []}]})
            await refused(400, "'tasks' is for the multi-task model", "/v2/models/alpha/infer",
                          json=image_request([png_bytes(1)], tasks="beta"))
            await refused(400, "must be an integer", "/v2/models/alpha/infer",
                          json=image_request([png_bytes(1)], top_k=True))
            await refused(404, "no model named", "/v2/models/No%20Such/infer", json=image_request([png_bytes(1)]))

    run(main())


def test_binary_bodies_built_by_hand(store_url, run_app):
    async def main():
        async with run_app(server_settings(store_url)) as app:
            files = [png_bytes(7), png_bytes(8)]
            body, headers = binary_request([({"name": "IMAGE", "datatype": "BYTES", "shape": [2]},
                                             codec.encode_bytes_elements(files))],
                                           outputs=[{"name": "LABELS", "parameters": {"binary_data": True}},
                                                    {"name": "PROBABILITIES"}], parameters={"top_k": 1})
            r = await app.client.post("/v2/models/gamma/infer", content=body, headers=headers)
            assert r.status_code == 200, r.text
            length = int(r.headers[codec.HEADER_LENGTH])
            answer = json.loads(r.content[:length])
            labels, probs = answer["outputs"]
            assert labels["shape"] == [2, 1] and "data" not in labels and probs["shape"] == [2, 5]
            top = codec.decode_bytes_elements(memoryview(r.content[length:]), 2, "LABELS")
            assert [t.decode() for t in top] == [f"gamma-class{int(np.argmax(row))}" for row in
                                                 np.reshape(probs["data"], (2, 5))]
            # a header length that points past the body, and bytes nobody claimed
            bad = await app.client.post("/v2/models/gamma/infer", content=body,
                                        headers={**headers, codec.HEADER_LENGTH: str(len(body) + 1)})
            assert bad.status_code == 400 and "the body has" in bad.json()["error"]
            extra = await app.client.post("/v2/models/gamma/infer", content=body + b"!", headers=headers)
            assert extra.status_code == 400 and "after the last binary input" in extra.json()["error"]

    run(main())


def test_v1_and_v2_requests_share_one_backbone_pass(store_url, run_app):
    async def main():
        settings = server_settings(store_url, max_queue_delay_ms=300, max_batch_size=8, feature_cache_mb=0)
        async with run_app(settings) as app:
            v1 = app.client.post("/v1/classify", json={"image": base64.b64encode(png_bytes(20)).decode()})
            v2 = app.client.post("/v2/models/_all/infer", json=image_request([png_bytes(21), png_bytes(22)]))
            r1, r2 = await asyncio.gather(v1, v2)
            assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
            assert r1.json()["timings_ms"]["batch_size"] == 3  # one image from /v1, two from /v2, one forward

    run(main())


def test_server_readiness_follows_draining(store_url, run_app):
    async def main():
        async with run_app(server_settings(store_url)) as app:
            assert (await app.client.get("/v2/health/ready")).json() == {"ready": True}
            app.state.draining = True
            r = await app.client.get("/v2/health/ready")
            assert r.status_code == 400 and r.json()["ready"] is False
            assert (await app.client.get("/v2/health/live")).json() == {"live": True}

    run(main())


# -- the repository extension's registry semantics --------------------------------------------------------------

def test_unload_survives_store_changes_until_load(store_url, run_app, micro_backbone):
    from tuner_store.urls import open_store

    async def main():
        async with run_app(server_settings(store_url, admin_token=TOKEN)) as app:
            registry = app.state.registry
            assert registry.state_of("alpha") == ("READY", None)
            r = await app.client.post("/v2/repository/models/alpha/unload", headers=AUTH, json={})
            assert r.status_code == 200 and r.json()["state"] == "UNAVAILABLE", r.text
            assert registry.state_of("alpha") == ("UNAVAILABLE", "unloaded on this replica")
            with open_store(store_url) as store:  # a new version arrives, as from a trainer or another replica
                store.put(make_artifact(micro_backbone, "alpha", num_classes=3, seed=42))
                revision = store.revision()
            await app.wait_for(lambda: registry.revision >= revision)
            assert "alpha" not in registry.resident and registry.record("alpha").version == 2
            c = await app.client.post("/v1/classify", json={"image": base64.b64encode(png_bytes(1)).decode()})
            assert set(c.json()["results"]) == {"beta", "gamma"}  # /v1 follows the replica's served set too

            r = await app.client.post("/v2/repository/models/alpha/load", headers=AUTH)
            assert r.status_code == 200 and r.json() == {"name": "alpha", "version": "2", "state": "READY",
                                                         "reason": ""}
            assert registry.resident.get("alpha").version == 2

            # a store without the name: 404 for both; the multi-task model is not a tuner
            for action in ("load", "unload"):
                assert (await app.client.post(f"/v2/repository/models/nosuch/{action}", headers=AUTH)).status_code == 404
                assert (await app.client.post(f"/v2/repository/models/_all/{action}", headers=AUTH)).status_code == 400
            config = await app.client.post("/v2/repository/models/alpha/load", headers=AUTH,
                                           json={"parameters": {"config": "{}"}})
            assert config.status_code == 400 and "POST /v1/tuners" in config.json()["error"]
            strict = await app.client.post("/v2/repository/index", json={"ready": 0})
            assert strict.status_code == 422  # 0 is not false

    run(main())


def test_load_of_a_tuner_that_cannot_serve_here_is_a_400_with_the_reason(store_url, run_app):
    from restuning.backbones import create_backbone
    from tuner_store.urls import open_store

    other = create_backbone(MICRO, weights="random:1")  # same structure, other weights: another fingerprint
    with open_store(store_url) as store:
        store.put(make_artifact(other, "stranger"))  # a store takes it; this server cannot serve it

    async def main():
        async with run_app(server_settings(store_url, admin_token=TOKEN)) as app:
            # tuners are validated lazily: the start-up warm-up (or a first request) finds the problem
            await app.wait_for(lambda: app.state.registry.state_of("stranger")[0] == "UNAVAILABLE")
            status, reason = app.state.registry.state_of("stranger")
            assert status == "UNAVAILABLE" and "cannot serve here" in reason
            r = await app.client.post("/v2/repository/models/stranger/load", headers=AUTH)
            assert r.status_code == 400 and r.json()["problems"], r.text
            index = {m["name"]: m for m in (await app.client.post("/v2/repository/index")).json()}
            assert index["stranger"]["state"] == "UNAVAILABLE" and "cannot serve here" in index["stranger"]["reason"]
            ready = await app.client.get("/v2/models/stranger/ready")
            assert ready.status_code == 400 and ready.json()["ready"] is False
            only_ready = (await app.client.post("/v2/repository/index", json={"ready": True})).json()
            assert {m["name"] for m in only_ready} == {"alpha", "beta", "gamma"}

    run(main())
