"""End to end with real processes: train a tiny tuner -> push -> classify -> delete, against a real uvicorn."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.helpers import LiveServer

pytestmark = pytest.mark.e2e


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "restune", *args], capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"restune {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def image_folder(root, per_class: int = 12):
    """Two visually distinct classes: bright top half vs bright bottom half."""
    rng = np.random.default_rng(0)
    for label in ("top", "bottom"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8)
            if label == "top":
                pixels[:16] += 180
            else:
                pixels[16:] += 180
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_train_push_classify_delete(tmp_path):
    data = image_folder(tmp_path / "data")
    artifact = tmp_path / "halves.safetensors"
    cli("train", "classify", "--backbone", "restune_vit_micro", "--weights", "random:0", "--data", str(data),
        "--epochs", "2", "--batch-size", "8", "--dim", "4", "--out", str(artifact), "--name", "halves",
        "--device", "cpu", "--seed", "0")
    assert artifact.stat().st_size > 0

    with LiveServer(f"file://{tmp_path / 'store'}", tmp_path, extra=["--admin-token", "tok"]) as server:
        env_token = {"RESTUNE_ADMIN_TOKEN": "tok"}
        no_token = {k: v for k, v in os.environ.items() if k != "RESTUNE_ADMIN_TOKEN"}
        denied = subprocess.run([sys.executable, "-m", "restune", "tuners", "push", str(artifact), "--server",
                                 server.url], capture_output=True, text=True, env=no_token)
        assert denied.returncode != 0 and "401" in denied.stderr

        pushed = subprocess.run([sys.executable, "-m", "restune", "tuners", "push", str(artifact), "--server",
                                 server.url, "--json"], capture_output=True, text=True,
                                env={**os.environ, **env_token})
        assert pushed.returncode == 0, pushed.stderr
        assert json.loads(pushed.stdout)[0]["version"] == 1

        # hot-loaded without a restart: poll until the server answers for the new task
        deadline = time.monotonic() + 10
        while True:
            out = cli("classify", str(data / "top" / "0.png"), "--server", server.url, "--json", check=False)
            if out.returncode == 0:
                break
            assert time.monotonic() < deadline, out.stderr
            time.sleep(0.1)
        result = json.loads(out.stdout)["results"]["halves"]
        assert result["tuner"] == "halves@1" and set(result["labels"]) <= {"top", "bottom"}

        listing = cli("tuners", "list", "--server", server.url, "--json")
        assert [r["name"] for r in json.loads(listing.stdout)] == ["halves"]
        shown = cli("tuners", "show", "halves", "--server", server.url, "--json")
        assert json.loads(shown.stdout)["labels"] == ["bottom", "top"]

        removed = subprocess.run([sys.executable, "-m", "restune", "tuners", "rm", "halves", "--server",
                                  server.url], capture_output=True, text=True, env={**os.environ, **env_token})
        assert removed.returncode == 0, removed.stderr
        deadline = time.monotonic() + 10
        while True:
            out = cli("classify", str(data / "top" / "0.png"), "--server", server.url, "--tasks", "halves",
                      check=False)
            if out.returncode != 0:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert "404" in out.stderr and "halves" in out.stderr


def test_task_names_that_are_module_methods_train_push_serve_classify(tmp_path):
    """A data folder named `train` (the usual layout) and tuner names `eval` and `a.b-c`, all the way through."""
    data = image_folder(tmp_path / "data" / "train", per_class=6)
    common = ["--backbone", "restune_vit_micro", "--weights", "random:0", "--data", str(data), "--epochs", "1",
              "--dim", "2", "--device", "cpu", "--no-progress"]
    artifacts = {}
    for name in ("train", "eval", "a.b-c"):
        artifacts[name] = tmp_path / f"{name}.safetensors"
        named = [] if name == "train" else ["--name", name]  # `train` comes from the folder's name
        cli("train", "classify", *common, *named, "--feature-cache", "--out", str(artifacts[name]))

    with LiveServer(f"file://{tmp_path / 'store'}", tmp_path) as server:
        for name, path in artifacts.items():
            cli("tuners", "push", str(path), "--server", server.url)
        deadline = time.monotonic() + 10
        while True:
            out = cli("classify", str(data / "top" / "0.png"), "--tasks", "train,eval,a.b-c", "--server", server.url,
                      check=False)
            if out.returncode == 0:
                break
            assert time.monotonic() < deadline, out.stderr
            time.sleep(0.1)
        lines = out.stdout.splitlines()
        assert [line.split()[0] for line in lines[:3]] == ["train", "eval", "a.b-c"]
        assert "[eval@1]" in out.stdout and lines[-1].startswith("timings (ms): ")
        assert out.stderr == ""  # the answer and nothing else: no httpx request log without -v
        import httpx

        with open(data / "bottom" / "0.png", "rb") as f:
            response = httpx.post(f"{server.url}/v1/classify", files={"file": f}, data={"tasks": "eval,train"})
        assert response.status_code == 200 and list(response.json()["results"]) == ["eval", "train"]
