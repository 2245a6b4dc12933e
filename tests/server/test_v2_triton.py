"""The Open Inference Protocol (v2) spoken by a client nobody here wrote: NVIDIA's `tritonclient[http]`, against
a real `restune serve` (uvicorn) on loopback. Binary tensor data on (the client's default) and off.

One server for the module (feature cache off, so every image runs the backbone and /metrics counts it); the tests
that unload or add tuners put things back.
"""
from __future__ import annotations

import base64
import re

import httpx
import numpy as np
import pytest

from tests.deploy.procs import wait_until
from tests.helpers import LiveServer, make_artifact, png_bytes

pytestmark = pytest.mark.e2e

TOKEN = "v2-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TUNERS = {"alpha": 3, "beta": 4, "gamma": 5}  # name -> classes


@pytest.fixture(scope="module")
def server(tmp_path_factory, micro_backbone):
    from tuner_store.urls import open_store

    root = tmp_path_factory.mktemp("v2")
    store_url = f"file://{root / 'store'}"
    with open_store(store_url) as store:
        for i, (name, classes) in enumerate(TUNERS.items()):
            store.put(make_artifact(micro_backbone, name, num_classes=classes, seed=i))
    live = LiveServer(store_url, root, extra=["--admin-token", TOKEN, "--feature-cache-mb", "0",
                                               "--max-queue-delay-ms", "50", "--max-batch-size", "8"])
    with live:
        live.store_url = store_url
        yield live


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.http as triton

    with triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60.0) as c:
        yield c


def image_input(images: list[bytes], binary: bool):
    """IMAGE, BYTES [B]: the files themselves as binary data; in JSON (binary off), their base64 text."""
    import tritonclient.http as triton

    values = images if binary else [base64.b64encode(i).decode() for i in images]
    tensor = triton.InferInput("IMAGE", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    return tensor


def outputs(*names, binary: bool, **kwargs):
    import tritonclient.http as triton

    return [triton.InferRequestedOutput(name, binary_data=binary, **kwargs) for name in names]


def v1_probabilities(server, image: bytes, task: str) -> dict[str, float]:
    """label -> score over every class, from /v1/classify (top_k = all): the reference for v2's outputs."""
    r = httpx.post(f"{server.url}/v1/classify", json={"image": base64.b64encode(image).decode(), "tasks": [task],
                                                       "top_k": 1000}, timeout=60)
    assert r.status_code == 200, r.text
    result = r.json()["results"][task]
    return dict(zip(result["labels"], result["scores"]))


def backbone_counts(server) -> tuple[float, float]:
    """(images, batches) through the backbone so far, from /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    total = float(re.search(r"^restune_batch_size_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^restune_batch_size_count (\S+)$", text, re.M).group(1))
    return total, count


def test_server_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "restune" and {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    alpha = client.get_model_metadata("alpha")
    assert alpha["name"] == "alpha" and alpha["versions"] == ["1"]
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in alpha["inputs"]} == {
        ("IMAGE", "BYTES", (-1,)), ("PIXELS", "UINT8", (-1, -1, -1, 3))}
    assert [(t["name"], t["datatype"], t["shape"]) for t in alpha["outputs"]] == [
        ("PROBABILITIES", "FP32", [-1, 3]), ("LABELS", "BYTES", [-1, -1])]
    assert client.get_model_metadata("beta", model_version="1")["outputs"][0]["shape"] == [-1, 4]
    multi = client.get_model_metadata("_all")
    assert [o["name"] for o in multi["outputs"]] == ["alpha", "alpha/LABELS", "beta", "beta/LABELS", "gamma",
                                                     "gamma/LABELS"]
    assert client.is_model_ready("alpha") and client.is_model_ready("alpha", "1") and client.is_model_ready("_all")
    assert not client.is_model_ready("alpha", "2") and not client.is_model_ready("nosuch")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_a_batch_of_encoded_images(server, client, binary):
    images = [png_bytes(1), png_bytes(2, size=48)]
    result = client.infer("alpha", [image_input(images, binary)], parameters={"top_k": 2},
                          outputs=outputs("PROBABILITIES", "LABELS", binary=binary))
    probs, labels = result.as_numpy("PROBABILITIES"), result.as_numpy("LABELS")
    assert probs.dtype == np.float32 and probs.shape == (2, 3) and labels.shape == (2, 2)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    response = result.get_response()
    assert response["model_name"] == "alpha" and response["model_version"] == "1"
    assert all(o["parameters"]["tuner"] == "alpha@1" for o in response["outputs"])
    assert ("binary_data_size" in response["outputs"][0]["parameters"]) is binary
    for row, image in enumerate(images):
        reference = v1_probabilities(server, image, "alpha")  # the same image through /v1
        mine = {f"alpha-class{c}": float(p) for c, p in enumerate(probs[row])}
        assert mine == pytest.approx(reference, abs=2e-6)
        top = [label.decode() if isinstance(label, bytes) else label for label in labels[row]]
        assert top == sorted(reference, key=reference.get, reverse=True)[:2]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_a_uint8_pixel_tensor(server, client, binary):
    import io

    import tritonclient.http as triton
    from PIL import Image

    files = [png_bytes(3, size=40), png_bytes(4, size=40)]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files])  # [2, 40, 40, 3]
    tensor = triton.InferInput("PIXELS", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    by_pixels = client.infer("beta", [tensor], outputs=outputs("PROBABILITIES", binary=binary))
    by_files = client.infer("beta", [image_input(files, True)], outputs=outputs("PROBABILITIES", binary=True))
    # the same pixels as decoded files or as a tensor: the same resize, the same answer
    assert np.array_equal(by_pixels.as_numpy("PROBABILITIES"), by_files.as_numpy("PROBABILITIES"))
    assert [o["name"] for o in by_pixels.get_response()["outputs"]] == ["PROBABILITIES"]


def test_classification_extension_and_default_outputs(client):
    result = client.infer("gamma", [image_input([png_bytes(5)], True)],
                          outputs=outputs("PROBABILITIES", binary=True, class_count=2))
    top = [s.decode() for s in result.as_numpy("PROBABILITIES")[0]]
    assert len(top) == 2 and all(re.fullmatch(r"0\.\d{6}:\d:gamma-class\d", s) for s in top), top
    assert float(top[0].split(":")[0]) >= float(top[1].split(":")[0])
    # no outputs named: every output of the model, as binary (what the client asks for then)
    plain = client.infer("gamma", [image_input([png_bytes(5)], True)])
    assert plain.as_numpy("PROBABILITIES").shape == (1, 5) and plain.as_numpy("LABELS").shape == (1, 5)


def test_the_multitask_model_runs_every_task_in_one_backbone_pass(server, client):
    images = [png_bytes(10 + i) for i in range(3)]
    before = backbone_counts(server)
    result = client.infer("_all", [image_input(images, True)])
    after = backbone_counts(server)
    assert (after[0] - before[0], after[1] - before[1]) == (3, 1)  # 3 images, 1 batch: one backbone pass
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == list(TUNERS)  # one output per task, named after it
    for name, classes in TUNERS.items():
        assert result.as_numpy(name).shape == (3, classes)
    single = client.infer("beta", [image_input(images, True)], outputs=outputs("PROBABILITIES", binary=True))
    assert np.allclose(single.as_numpy("PROBABILITIES"), result.as_numpy("beta"), atol=1e-6)
    # the tasks named in a parameter, and labels on request
    subset = client.infer("_all", [image_input(images[:1], False)], parameters={"tasks": "gamma,alpha", "top_k": 1},
                          outputs=outputs("gamma", "alpha/LABELS", binary=False))
    assert subset.as_numpy("gamma").shape == (1, 5) and subset.as_numpy("alpha/LABELS").shape == (1, 1)


def test_errors_are_the_protocols_json_with_the_right_status(server, client):
    from tritonclient.utils import InferenceServerException

    cases = [
        (lambda: client.infer("nosuch", [image_input([png_bytes(1)], True)]), "404", "no model named"),
        (lambda: client.infer("alpha", [image_input([b"not an image"], True)]), "400", "image 0: bad image"),
        (lambda: client.infer("alpha", [image_input([png_bytes(1)], True)], parameters={"top_k": 0}), "400",
         "top_k"),
        (lambda: client.infer("alpha", [image_input([png_bytes(1)], True)], outputs=outputs("NOPE", binary=True)),
         "400", "has no output 'NOPE'"),
        (lambda: client.infer("_all", [image_input([png_bytes(1)], True)], parameters={"tasks": "zeta"}), "404",
         "unknown task(s): zeta"),
        (lambda: client.infer("alpha", [image_input([png_bytes(1)], True)], model_version="7"), "404",
         "version 7"),
    ]
    for call, status, words in cases:
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == status and words in caught.value.message(), caught.value


def test_repository_index_load_and_unload(server, client, micro_backbone):
    from tritonclient.utils import InferenceServerException

    from tuner_store.urls import open_store

    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert {n: (m["state"], m["version"]) for n, m in index.items()} == {n: ("READY", "1") for n in TUNERS}
    for headers, status in ((None, "401"), ({"Authorization": "Bearer wrong"}, "403")):
        with pytest.raises(InferenceServerException) as caught:
            client.unload_model("alpha", headers=headers)
        assert caught.value.status() == status
    assert client.is_model_ready("alpha")

    client.unload_model("alpha", headers=AUTH)
    assert not client.is_model_ready("alpha")
    entry = {m["name"]: m for m in client.get_model_repository_index()}["alpha"]
    assert entry["state"] == "UNAVAILABLE" and entry["reason"] == "unloaded on this replica"
    with pytest.raises(InferenceServerException) as caught:
        client.infer("alpha", [image_input([png_bytes(1)], True)])
    assert caught.value.status() == "400" and "not ready on this replica" in caught.value.message()
    assert "alpha" not in [o["name"] for o in client.get_model_metadata("_all")["outputs"]]
    assert httpx.get(f"{server.url}/v1/tuners/alpha", timeout=30).status_code == 200  # the store still has it

    # a new version in the store is not served here while alpha is unloaded ...
    with open_store(server.store_url) as store:
        store.put(make_artifact(micro_backbone, "alpha", num_classes=3, seed=99))
        revision = store.revision()
    wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=30).json()["store_revision"] >= revision, 30,
               what="the server to apply the put")
    assert not client.is_model_ready("alpha") and not client.is_model_ready("alpha", "2")
    # ... until it is loaded again: then the store's newest version serves
    client.load_model("alpha", headers=AUTH)
    assert client.is_model_ready("alpha", "2") and client.get_model_metadata("alpha")["versions"] == ["2"]
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("nosuch", headers=AUTH)
    assert caught.value.status() == "404"
    assert client.get_model_repository_index(headers=AUTH)  # reads need no token, and a token does no harm
