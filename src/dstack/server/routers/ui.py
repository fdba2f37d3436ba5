"""The web UI: static ES modules shipped in the package (`dstack/server/ui/`), no build step and
nothing fetched from elsewhere. `/` and any client-side route answer `index.html` (the browser
router picks the page); `/ui/...` are the assets. Every UI answer carries a Content-Security-
Policy that allows only this origin's scripts and styles: the UI renders with DOM calls and
text nodes, never inline handlers or `innerHTML`, so it needs nothing looser.

Client-side routes are served from the 404 handler, not from a catch-all route: a catch-all
GET would shadow GET routes added after it and turn every unknown POST into a 405. Only a GET
that matched no route and is outside the server's own prefixes falls back to the page, so the
API keeps its JSON 404s."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# First path segments that belong to the server, not to the UI's client-side routes.
RESERVED = ("api", "proxy", "ui", "healthcheck", "metrics", "docs", "openapi.json")
MEDIA = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".html": "text/html",
}

router = APIRouter(include_in_schema=False)


def _index() -> Response:
    # The page itself is never cached: a new server version must load its new modules.
    headers = {**HEADERS, "Cache-Control": "no-cache"}
    return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=headers)


@router.get("/ui/{asset:path}")
async def asset(asset: str) -> Response:
    path = (UI_DIR / asset).resolve()
    if not path.is_relative_to(UI_DIR) or not path.is_file() or path.suffix not in MEDIA:
        raise HTTPException(status_code=404, detail="Not Found")
    headers = {**HEADERS, "Cache-Control": "no-cache"}
    return FileResponse(path, media_type=MEDIA[path.suffix], headers=headers)


@router.get("/")
async def index() -> Response:
    return _index()


def is_client_route(request: Request, status_code: int) -> bool:
    """A page address the browser asked for (a reloaded deep link such as
    `/projects/main/runs/my-run`), as opposed to an unknown API or proxy path."""
    first = request.url.path.lstrip("/").split("/", 1)[0]
    return status_code == 404 and request.method in ("GET", "HEAD") and first not in RESERVED


def install(app: FastAPI) -> None:
    """The UI's routes and the fallback that answers client-side routes with the page."""
    app.include_router(router)

    @app.exception_handler(StarletteHTTPException)
    async def _not_found(request: Request, e: StarletteHTTPException) -> Response:
        if is_client_route(request, e.status_code):
            return _index()
        return await http_exception_handler(request, e)
