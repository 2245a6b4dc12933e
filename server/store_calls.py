"""Store calls from a request handler: off the event loop, each store error turned into its HTTP answer.

Shared by every router that reads or writes the store (/v1/tuners, the v2 model repository), so a store error
means the same status everywhere; where the store lives (a path, a Redis address) stays in the log.
"""
from __future__ import annotations

import asyncio
import logging

from server.http_errors import APIError
from tuner_store.errors import (
    ArtifactError,
    ConflictError,
    NotFoundError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
)

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
        if isinstance(exc, StoreFullError):  # nothing was written; reads still work
            log.warning("%s", exc)
            return APIError(507, "the tuner store is full: nothing was stored; the tuners already stored keep "
                                 "serving; free space (or delete tuners) and retry", headers={"Retry-After": "30"})
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

    async def __call__(self, fn, *args, executor=None, deadline: bool = True):
        """fn(*args) on a helper thread (or `executor`), for at most --store-timeout-s; a StoreError becomes its
        APIError.

        A store that hangs (not one that refuses) is answered 503 after the deadline. The call itself ends on its
        own (the Redis client's timeouts are the same): until then it holds a helper thread, not the request.
        `deadline=False` is for work that does not wait on the store (validating an upload)."""
        timeout = self.state.settings.store_timeout_s
        try:
            call = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
            return await (asyncio.wait_for(call, timeout) if deadline else call)
        except asyncio.TimeoutError:
            log.warning("a tuner store call took longer than %g s", timeout)
            raise APIError(503, f"tuner store unavailable: it did not answer within {timeout:g} s; the tuners already "
                                "loaded keep serving; retry later", headers={"Retry-After": "2"}) from None
        except StoreError as exc:
            raise self.error(exc) from None
