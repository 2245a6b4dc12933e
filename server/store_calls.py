"""Store calls from a request handler: off the event loop, each store error turned into its HTTP answer.

Shared by every router that reads or writes the store (/v1/tuners, the v2 model repository), so a store error
means the same status everywhere; where the store lives (a path, a Redis address) stays in the log.
"""
from __future__ import annotations

import asyncio
import logging

from server.http_errors import APIError
from tuner_store.errors import ArtifactError, ConflictError, NotFoundError, StoreError, StoreUnavailableError

log = logging.getLogger(__name__)


class StoreCalls:
    def __init__(self, state):
        self.state = state

    def public(self, message: str) -> str:
        """A store message with the store's location replaced, fit for a client."""
        for where in (getattr(self.state.store, "url", None), getattr(self.state.store, "root", None)):
            if where:
                message = message.replace(str(where), "the tuner store")
        return message

    def error(self, exc: StoreError) -> APIError:
        if isinstance(exc, StoreUnavailableError):
            log.warning("%s", exc)
            return APIError(503, "tuner store unavailable: it cannot be reached right now; the tuners already "
                                 "loaded keep serving; retry later", headers={"Retry-After": "2"})
        if isinstance(exc, NotFoundError):
            return APIError(404, self.public(str(exc)))
        if isinstance(exc, ArtifactError):
            return APIError(400, self.public(f"invalid artifact: {exc}"),
                            problems=[self.public(p) for p in exc.problems])
        if isinstance(exc, ConflictError):
            return APIError(409, self.public(str(exc)))
        log.warning("%s", exc)  # the backend answered, with an error (e.g. Redis out of memory)
        return APIError(503, "tuner store error; retry later", headers={"Retry-After": "2"})

    async def __call__(self, fn, *args):
        """fn(*args) on a helper thread; a StoreError becomes its APIError."""
        try:
            return await asyncio.to_thread(fn, *args)
        except StoreError as exc:
            raise self.error(exc) from None
