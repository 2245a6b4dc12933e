"""The operator console: static files under /ui/ (GET / leads there), served by this process.

Three files and nothing else (server/console/: no build step, nothing from a CDN, no request leaves this
server); the page talks to the same /v1 endpoints and /metrics as any client, with the same admin token on
writes. Every console answer carries headers that keep the page from doing more than that: a
Content-Security-Policy allowing scripts, styles and connections only from this origin (no inline script),
images also from data:/blob: (generated PNGs, previews), and no framing; nosniff; no referrer.
"""
from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from server.http_errors import APIError
from server.state import ServerState

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a server upgrade must not leave an old app.js running
}
FILES = {  # URL name -> (file in server/console, content type); nothing else is served
    "": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "app.css": ("app.css", "text/css; charset=utf-8"),
}


def _read(name: str) -> bytes:
    return resources.files("server").joinpath("console", name).read_bytes()


def router(state: ServerState) -> APIRouter:
    routes = APIRouter(include_in_schema=False)  # a page, not part of the API the OpenAPI document describes
    files = {url: (_read(name), kind) for url, (name, kind) in FILES.items()}  # read once, at start

    @routes.get("/")
    async def root():
        return RedirectResponse("/ui/", status_code=307)

    @routes.get("/ui")
    async def ui_no_slash():
        return RedirectResponse("/ui/", status_code=307)

    @routes.get("/ui/config.json")
    async def config():
        """What the page shows besides the API it calls: whether generation is enabled."""
        return Response(f'{{"generation": {str(state.settings.diffusion_model is not None).lower()}}}',
                        media_type="application/json", headers=SECURITY_HEADERS)

    @routes.get("/ui/{name}")
    async def page(name: str = ""):
        if name not in files:
            raise APIError(404, f"no console file {name!r}")
        data, kind = files[name]
        return Response(data, media_type=kind, headers=SECURITY_HEADERS)

    @routes.get("/ui/")
    async def index():
        data, kind = files[""]
        return Response(data, media_type=kind, headers=SECURITY_HEADERS)

    return routes
