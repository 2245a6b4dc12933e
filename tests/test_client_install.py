"""`pip install 'restune[client]'`: the command line's --server commands and the Python client, without torch.

The client runs in a subprocess where every package of the other extras fails to import (as in an
installation without them); it talks to a real server on loopback.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.helpers import LiveServer, make_artifact, png_bytes
from tuner_store.artifact import encode_artifact

pytestmark = pytest.mark.e2e

ABSENT = ("torch", "torchvision", "numpy", "PIL", "timm", "safetensors", "tqdm", "sklearn", "fastapi", "starlette",
          "uvicorn", "multipart", "prometheus_client", "redis", "diffusers", "transformers", "matplotlib", "psutil",
          "triton")
BLOCKER = f"""
import sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Absent())
"""


def client(*args: str) -> subprocess.CompletedProcess:
    code = BLOCKER + "from restune.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def python_client(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + script], capture_output=True, text=True, timeout=120)


def test_server_commands_and_python_client_need_no_model_packages(tmp_path, micro_backbone):
    artifact = tmp_path / "colours.safetensors"
    artifact.write_bytes(encode_artifact(make_artifact(micro_backbone, "colours", num_classes=3)))
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(3))
    with LiveServer(f"file://{tmp_path / 'store'}", tmp_path) as server:
        pushed = client("tuners", "push", str(artifact), "--server", server.url, "--json")
        assert pushed.returncode == 0, pushed.stderr
        assert (json.loads(pushed.stdout)[0]["name"], json.loads(pushed.stdout)[0]["version"]) == ("colours", 1)
        listed = client("tuners", "list", "--server", server.url, "--json")
        assert [r["name"] for r in json.loads(listed.stdout)] == ["colours"], listed.stderr
        shown = client("tuners", "show", "colours", "--server", server.url)
        assert shown.returncode == 0 and "3 labels" in shown.stdout and "parameters" in shown.stdout, shown.stderr
        deadline = time.monotonic() + 15
        while True:  # hot-loaded without a restart
            answer = client("classify", str(image), "--tasks", "colours", "--server", server.url, "--json")
            if answer.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout)["results"]["colours"]["tuner"] == "colours@1"
        script = (f"from clients.client import RestuneClient\n"
                  f"with RestuneClient({server.url!r}) as c:\n"
                  f"    print(c.classify({str(image)!r}, top_k=1)['results']['colours']['labels'])\n")
        run = python_client(script)
        assert run.returncode == 0 and run.stdout.strip().startswith("["), run.stderr
        removed = client("tuners", "rm", "colours", "--server", server.url)
        assert removed.returncode == 0 and "colours@1" in removed.stdout, removed.stderr


def test_a_command_that_needs_an_extra_says_which():
    out = client("serve", "--port", "0")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("restune: error: this command needs ")
    assert "pip install 'restune[" in out.stderr
