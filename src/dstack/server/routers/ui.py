"""The web UI: static ES modules shipped in the package (`dstack/server/ui/`), no build step and
nothing fetched from elsewhere. `/` and any client-side route answer `index.html` (the browser
router picks the page); `/ui/...` are the assets. Every UI answer carries a Content-Security-
Policy that allows only this origin's scripts and styles: the UI renders with DOM calls and
text nodes, never inline handlers or `innerHTML`, so it needs nothing looser.

This router must be included last: its catch-all GET would otherwise shadow GET routes added
after it. Paths under the API's prefixes never fall back to the page, so a mistyped API GET is
still a JSON 404."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

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


@router.get("/{route:path}")
async def client_route(route: str) -> Response:
    """A deep link (`/runs/main/my-run`) reloaded in the browser gets the page too."""
    if route.split("/", 1)[0] in RESERVED:
        raise HTTPException(status_code=404, detail="Not Found")
    return _index()
