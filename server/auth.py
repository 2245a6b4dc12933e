"""Admin-token check for write endpoints (constant-time comparison)."""
from __future__ import annotations

import hmac

from fastapi import Request

from server.http_errors import APIError


def require_admin(request: Request, admin_token: str | None) -> None:
    if not admin_token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "this endpoint needs 'Authorization: Bearer <admin token>'",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
        raise APIError(403, "the admin token is not valid")
