"""Graceful shutdown: SIGTERM drains the server before it stops.

An orchestrator (Kubernetes, `docker stop`, systemd) sends SIGTERM and, after a grace period, SIGKILL. Stopping
at once on SIGTERM would refuse connections that load balancers are still sending, and uvicorn re-raises the
signal after its own graceful stop, so the process would end "killed by SIGTERM" (exit 143), not 0. Here:

1. SIGTERM: `/readyz` answers 503 from that moment (balancers that follow readiness stop sending), and every
   response carries `Connection: close` (clients holding keep-alive connections reconnect, and a new connection
   goes to another replica). New connections are still accepted and served for `drain_delay_s`: balancers
   update a moment late, and a refused request then would be a failed request.
2. After `drain_delay_s`: the listening socket closes (new connections are refused), idle connections close,
   and the requests in flight, including those waiting in the batcher's queue, finish; at most
   `drain_timeout_s`, then uvicorn cancels what is left.
3. The lifespan shutdown stops the batcher (its queue is empty by then) and the store watcher; exit 0.

SIGINT (Ctrl+C) keeps uvicorn's behaviour: stop accepting at once, finish what is in flight, a second Ctrl+C
forces. A second SIGTERM during the delay skips the rest of it.
"""
from __future__ import annotations

import logging
import signal
import time

import uvicorn

log = logging.getLogger(__name__)

# uvicorn.run's exit status when the server never started (e.g. the port was taken)
STARTUP_FAILURE = 3


class CloseWhileDraining:
    """ASGI middleware: once draining, every response tells the client to close its connection."""

    def __init__(self, app, state):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_closing(message):
            if message["type"] == "http.response.start" and self.state.draining:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with SIGTERM turned into the drain described in this module's docstring."""

    def __init__(self, config: uvicorn.Config, state, *, drain_delay_s: float):
        super().__init__(config)
        self.state = state
        self.drain_delay_s = drain_delay_s
        self.drain_started: float | None = None

    def handle_exit(self, sig, frame) -> None:
        if sig != signal.SIGTERM:
            return super().handle_exit(sig, frame)
        # Not recorded in _captured_signals: uvicorn would re-raise it after the shutdown, and the process would
        # die of the signal instead of exiting 0 after a clean drain.
        if self.drain_started is None and self.started:
            self.drain_started = time.monotonic()
            self.state.draining = True
            log.warning("SIGTERM: draining (readiness 503 now; new connections refused in %.1f s, then up to "
                        "%.1f s for requests in flight)", self.drain_delay_s, self.config.timeout_graceful_shutdown)
        else:  # a second SIGTERM, or one before the server listened: nothing to wait for
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        # The main loop ticks every 0.1 s; that is precise enough for a delay measured in seconds, and needs no
        # timer thread or loop callback from inside a signal handler.
        if (self.drain_started is not None and not self.should_exit
                and time.monotonic() - self.drain_started >= self.drain_delay_s):
            log.warning("drain delay over: refusing new connections, finishing the requests in flight")
            self.should_exit = True
        return await super().on_tick(counter)


def serve_until_drained(app, settings) -> int:
    """Run `app` (from server.app.create_app) until SIGTERM has drained it or SIGINT stopped it; the exit status."""
    state = app.state.restune
    config = uvicorn.Config(CloseWhileDraining(app, state), host=settings.host, port=settings.port,
                            log_level=settings.log_level, timeout_graceful_shutdown=settings.drain_timeout_s)
    server = DrainingServer(config, state, drain_delay_s=settings.drain_delay_s)
    server.run()
    return 0 if server.started else STARTUP_FAILURE
