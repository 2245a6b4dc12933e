"""Replicas started the way deploy/kubernetes runs them, for the shutdown and rolling-update tests."""
from __future__ import annotations

import http.client
import select
import signal
import socket
import threading
import time
from pathlib import Path

from tests.deploy import kube
from tests.helpers import LiveServer

TOKEN = "rollout-test-token"


def manifest_drain() -> dict[str, float]:
    """The CPU overlay's shutdown numbers (grace period, preStop sleep, drain delay and timeout): the processes
    under test drain exactly as the committed manifests configure them."""
    return kube.drain_budget(kube.rendered("cpu"))


def replica(store: str, log_dir: Path, *extra: str) -> LiveServer:
    drain = manifest_drain()
    env = {"RESTUNE_DRAIN_DELAY_S": str(drain["delay"]), "RESTUNE_DRAIN_TIMEOUT_S": str(drain["timeout"])}
    # one intra-op thread: up to three replicas, the load and the test share two cores here
    return LiveServer(store, log_dir, extra=["--admin-token", TOKEN, "--torch-threads", "1", *extra], env=env)


def start_together(servers: list[LiveServer]) -> None:
    """Start servers in parallel (each spends seconds importing torch); the first failure is raised."""
    errors: list[BaseException] = []

    def start(server: LiveServer) -> None:
        try:
            server.start()
        except Exception as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def sigterm(server: LiveServer) -> float:
    """Send SIGTERM, as the kubelet does after preStop; the monotonic time it was sent."""
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    return sent


class RawRequest:
    """A classify request written straight to a socket: all of it, or only its headers and the first half of its
    body until `finish` sends the rest. Either way the test knows the request is in flight when it signals."""

    def __init__(self, port: int, body: bytes, *, whole: bool = True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        cut = len(body) if whole else len(body) // 2
        self.sock.sendall(head + body[:cut])
        self.rest = body[cut:]

    def answered_yet(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])

    def finish(self) -> tuple[int, dict[str, str], bytes]:
        """Send what is left; (status, headers, body) of the answer."""
        if self.rest:
            self.sock.sendall(self.rest)
        response = http.client.HTTPResponse(self.sock)
        response.begin()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        self.sock.close()
        return response.status, headers, body
