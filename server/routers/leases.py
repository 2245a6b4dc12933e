"""Holding a request's tuners resident while it runs, as HTTP answers when that cannot be done."""
from __future__ import annotations

from server.http_errors import APIError
from server.registry import Lease, NotServedError
from server.residency import ResidencyError
from server.state import ServerState


async def hold(state: ServerState, names: list[str]) -> Lease:
    """Make `names` resident for one request; 503 with Retry-After when that cannot happen in time."""
    try:
        return await state.registry.acquire(names, timeout=state.settings.miss_timeout_s)
    except ResidencyError as exc:
        raise APIError(503, str(exc), headers={"Retry-After": "1"}) from None
    except NotServedError as exc:
        raise APIError(404, str(exc)) from None
