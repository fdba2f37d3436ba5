"""The OpenAI-compatible entry point: `/proxy/models/<project>/models`, `.../chat/completions`
and `.../completions`, routed by the request's `model` to that model's service.

Every call needs a project member's token (the listing tells which models exist). The request
goes to `<model prefix>/chat/completions` (or `/completions`) on a ready replica, streamed
like any other proxied request, so `stream: true` works.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from dstack.server.db import tables as t
from dstack.server.proxy.forward import BodyTooLarge, RequestBody

if TYPE_CHECKING:
    from dstack.server.proxy.handler import Proxy

ROUTES = {"chat/completions", "completions"}


async def _project_id(proxy: Proxy, name: str) -> str | None:
    async with proxy.db.session() as s:
        return (
            await s.execute(select(t.Project.id).where(t.Project.name == name))
        ).scalar_one_or_none()


async def handle_models(proxy: Proxy, scope: dict[str, Any], receive: Any, send: Any) -> None:
    from dstack.server.proxy.handler import MODELS, HTTPError, _send_json

    project, _, rest = scope["path"][len(MODELS) :].partition("/")
    if scope["type"] != "http":
        raise HTTPError(404, "WebSockets are not served under /proxy/models", "resource_not_exists")
    project_id = await _project_id(proxy, project) if project else None
    if project_id is None:
        raise HTTPError(404, f"Project {project} not found", "resource_not_exists")
    await proxy._authorize(scope, project_id)
    rest = rest.strip("/")
    models = await proxy.registry.models(project)
    if rest == "models" and scope["method"] in ("GET", "HEAD"):
        data = [
            {"id": name, "object": "model", "created": int(time.time()), "owned_by": project}
            for name, _ in models
        ]
        await _send_json(send, 200, {"object": "list", "data": data})
        return
    if rest not in ROUTES:
        raise HTTPError(
            404,
            f"Unknown model endpoint /{rest}; use /models, /chat/completions or /completions",
            "resource_not_exists",
        )
    if scope["method"] != "POST":
        raise HTTPError(405, f"/{rest} accepts POST only", "method_not_allowed")
    body = RequestBody(receive, None, proxy.config.max_body)
    try:
        data = b"".join([c async for c in body.content()])  # type: ignore[union-attr]
    except BodyTooLarge as e:
        raise HTTPError(
            413, f"Request body is larger than {proxy.config.max_body} bytes", "request_too_large"
        ) from e
    try:
        name = json.loads(data or b"{}").get("model")
    except (ValueError, AttributeError):
        name = None
    if not isinstance(name, str) or not name:
        raise HTTPError(400, "The request body must be JSON with a `model`", "invalid_request")
    run = next((r for n, r in models if n == name), None)
    if run is None:
        raise HTTPError(404, f"Model {name} not found in project {project}", "resource_not_exists")
    svc = await proxy.registry.service(project, run)
    if svc is None or not svc.active or svc.model is None:
        raise HTTPError(404, f"Model {name} not found in project {project}", "resource_not_exists")
    replay = RequestBody(receive, len(data), proxy.config.max_body)
    replay.data = data
    prefix = str(svc.model.get("prefix") or "/v1").rstrip("/")
    await proxy._dispatch(scope, receive, send, svc, f"{prefix}/{rest}", MODELS + project, replay)
