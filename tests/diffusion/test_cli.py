"""CLI smoke at tiny sizes: train style → store → generate locally; generate --server and push over HTTP
against a loopback stub that speaks the POST /v1/generate and POST /v1/tuners contracts; describe --diffusion."""
from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from restune.cli import main


@pytest.fixture
def stub_server():
    """A loopback HTTP server answering like restune's: it records each request."""
    from PIL import Image

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if self.path == "/v1/generate":
                req = json.loads(body)
                images = []
                for i, prompt in enumerate(req["prompts"]):
                    for style in req["styles"]:
                        buf = io.BytesIO()
                        Image.new("RGB", (8, 8), (10 * i, 200, 30)).save(buf, format="PNG")
                        images.append({"prompt": prompt, "style": style, "seed": req.get("seed", 0) + i,
                                       "png_base64": base64.b64encode(buf.getvalue()).decode()})
                answer = {"images": images, "timings_ms": {"total_ms": 1.5}}
            else:
                answer = {"name": "red-stripes", "version": 4}
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # the stored record, as a server answers GET /v1/tuners/NAME?version=N
            seen.append({"path": self.path, "headers": dict(self.headers), "body": b""})
            data = json.dumps({"name": "red-stripes", "version": 4, "kind": "diffusion", "sha256": "0" * 64,
                               "size_bytes": 1, "created_at": "2026-01-01T00:00:00Z", "backbone_name": "tiny",
                               "backbone_fingerprint": "0" * 64, "num_labels": 0, "metrics": {},
                               "ref": "red-stripes@4", "serving": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_train_style_then_generate_locally(style_folder, tmp_path, capsys):
    store = f"file://{tmp_path / 'store'}"
    artifact = tmp_path / "red.safetensors"
    code = main(["train", "style", "--images", str(style_folder), "--style", "red-stripes", "--steps", "3",
                 "--batch-size", "4", "--resolution", "32", "--lr", "1e-3", "--out", str(artifact), "--push", store,
                 "--device", "cpu", "--no-progress", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pushed"] == "red-stripes@1" and out["written"] == str(artifact)
    assert out["metrics"]["unreadable_files"] == 1 and out["metrics"]["steps"] == 3
    assert "1 files could not be read as images" in out["images"]

    out_dir = tmp_path / "gen"
    code = main(["generate", "a red house", "a boat", "--styles", "base,red-stripes", "--store", store,
                 "--steps", "2", "--height", "32", "--width", "32", "--seed", "9", "--out", str(out_dir),
                 "--device", "cpu", "--no-progress", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [(i["prompt"], i["style"], i["seed"]) for i in result["images"]] == [
        ("a red house", "base", 9), ("a red house", "red-stripes", 9), ("a boat", "base", 10),
        ("a boat", "red-stripes", 10)]
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "00-base-a-red-house-9.png", "01-red-stripes-a-red-house-9.png", "02-base-a-boat-10.png",
        "03-red-stripes-a-boat-10.png"]

    # The artifact file works without a store too; an unknown style is a one-line error, exit code 2.
    code = main(["generate", "a cat", "--styles", "red-stripes", "--tuner-file", str(artifact), "--store",
                 f"file://{tmp_path / 'empty'}", "--steps", "1", "--height", "32", "--width", "32",
                 "--out", str(tmp_path / "gen2"), "--device", "cpu", "--no-progress"])
    assert code == 0
    capsys.readouterr()
    code = main(["generate", "a cat", "--styles", "nope", "--store", store, "--steps", "1", "--height", "32",
                 "--width", "32", "--out", str(tmp_path / "gen3"), "--device", "cpu"])
    assert code == 2
    assert "style(s) ['nope'] not found in the store" in capsys.readouterr().err
    code = main(["generate", "a cat", "--steps", "0", "--height", "33", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "steps must be an integer in [1, 150], got 0" in err and "height 33 is not a multiple" in err


def test_generate_on_a_server_uses_the_contract(stub_server, tmp_path, capsys):
    url, seen = stub_server
    code = main(["generate", "a cat", "a dog", "--styles", "base,ink", "--server", url, "--steps", "20",
                 "--seed", "4", "--out", str(tmp_path)])
    assert code == 0
    body = json.loads(seen[0]["body"])
    assert seen[0]["path"] == "/v1/generate"
    assert body == {"prompts": ["a cat", "a dog"], "styles": ["base", "ink"], "steps": 20, "seed": 4}
    assert len(list(tmp_path.glob("*.png"))) == 4
    assert "03-ink-a-dog-5.png" in capsys.readouterr().out


def test_push_over_http_sends_the_artifact_bytes_with_the_admin_token(stub_server, monkeypatch, tiny_pipe):
    from training.push import push_artifact
    from training.style import style_artifact
    from tuner_store.artifact import decode_artifact

    url, seen = stub_server
    monkeypatch.setenv("RESTUNE_ADMIN_TOKEN", "s3cret")
    artifact = style_artifact("red-stripes", tiny_pipe.new_tuner(seed=0), tiny_pipe, {"steps": 0})
    assert push_artifact(artifact, url) == "red-stripes@4"
    request = seen[0]
    assert request["path"] == "/v1/tuners"
    assert request["headers"]["Content-Type"] == "application/octet-stream"
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    assert decode_artifact(request["body"]).name == "red-stripes"
    assert seen[1]["path"] == "/v1/tuners/red-stripes?version=4"  # the stored record, read back


def test_describe_diffusion(capsys):
    assert main(["describe", "--diffusion", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"] == "sd-v1.5" and d["trainable_params"] == 3_933_920
    assert main(["describe", "--diffusion", "tiny-random", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 13_392
