"""The helpers tests share: free ports, tiny artifacts and images, server settings, the app in-process, and real
`restune serve` processes on loopback."""
from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from restuning.bypass import BypassConfig, build_bypass

MICRO = "restune_vit_micro"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_artifact(backbone, name: str, num_classes: int = 3, seed: int = 0, **structure):
    from tuner_store.artifact import classification_artifact

    config = BypassConfig.create(backbone.info, num_classes=num_classes, dim=structure.pop("dim", 4), **structure)
    bypass = build_bypass(config, backbone.embed_dim, seed=seed)
    labels = [f"{name}-class{i}" for i in range(num_classes)]
    return classification_artifact(name, bypass, labels, backbone, {"note": "test"})


def png_bytes(seed: int = 0, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def server_settings(store_url: str, **overrides):
    from server.settings import ServerSettings

    values = dict(backbone=MICRO, weights="random:0", store=store_url, device="cpu", dtype="float32",
                  max_queue_delay_ms=20.0)
    values.update(overrides)
    return ServerSettings(**values)


class RunningApp:
    """The app with its lifespan running, and an in-process httpx client."""

    def __init__(self, app):
        self.app = app
        self.state = app.state.restune
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")

    async def wait_for(self, predicate, timeout: float = 5.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.02)


class LiveServer:
    """`python -m restune serve …` in a subprocess; `url` once ready; logs in `log_path`."""

    def __init__(self, store: str, log_dir: Path, *, backbone: str = "restune_vit_micro", weights: str = "random:0",
                 port: int | None = None, extra: list[str] | None = None, env: dict | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"server-{self.port}.log"
        self.cmd = [sys.executable, "-m", "restune", "serve", "--backbone", backbone, "--weights", weights,
                    "--store", store, "--port", str(self.port), "--device", "cpu", "--log-level", "warning",
                    *(extra or [])]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "LiveServer":
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not up within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
