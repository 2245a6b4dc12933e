"""A real redis-server for tests, started on a free loopback port (never a fake Redis).

`tests/conftest.py` imports the fixtures, so any test can ask for them:

- `redis_server` (session): the running server; `.url(db)`, `.new_url()`, `.port`.
- `redis_url` (function): `redis://127.0.0.1:PORT/DB` on a database no other test has used, flushed.

The server runs without persistence (`--save '' --appendonly no`) and with 1024 databases, so every
test can have a database of its own. `.ci/run` installs Debian's redis-server when it is missing;
without it these fixtures fail (they do not skip: a green run must have exercised Redis).
"""
from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import free_port

DATABASES = 1024


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1."""

    def __init__(self, workdir: str | Path, executable: str = "redis-server"):
        self.workdir = Path(workdir)
        self.executable = executable
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._databases = itertools.count(1)  # db 0 is left for ad-hoc use

    def start(self, timeout: float = 15.0) -> "RedisServer":
        # A free port can be taken between probing and binding; try a few.
        for _ in range(5):
            self.port = free_port()
            log = open(self.workdir / f"redis-{self.port}.log", "wb")
            self.process = subprocess.Popen(
                [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--databases", str(DATABASES), "--dir", str(self.workdir)],
                stdout=log, stderr=subprocess.STDOUT,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                if _pong(self.port):
                    return self
                time.sleep(0.05)
            self.stop()
        output = (self.workdir / f"redis-{self.port}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}:\n{output}")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def new_url(self) -> str:
        """A database no other caller has been given, flushed."""
        import redis

        db = next(self._databases)
        if db >= DATABASES:
            raise RuntimeError(f"all {DATABASES} test databases are in use; raise DATABASES in {__file__}")
        client = redis.Redis(host="127.0.0.1", port=self.port, db=db)
        try:
            client.flushdb()
        finally:
            client.close()
        return self.url(db)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not installed: `apt-get install -y redis-server` (.ci/run does this)")
    server = RedisServer(tmp_path_factory.mktemp("redis"), executable).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    return redis_server.new_url()
