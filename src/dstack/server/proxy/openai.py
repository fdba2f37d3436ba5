"""The OpenAI-compatible entry point, `/proxy/models/<project>/...`: what a request means and
where it goes. `handler.py` authorizes the caller and forwards; this module only resolves.

`/models` lists the project's model services (the listing is built here); `/chat/completions`
and `/completions` go to the service whose `model.name` the JSON body's `model` names, at
`<model prefix>/chat/completions` (or `/completions`) on a ready replica, streamed like any
other proxied request, so `stream: true` works.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import select

from dstack.server.db import tables as t
from dstack.server.db.session import Database
from dstack.server.proxy.errors import HTTPError
from dstack.server.proxy.registry import Registry, Service

LIST = "models"
ROUTES = {"chat/completions", "completions"}


def split_path(rest: str) -> tuple[str, str]:
    """`<project>/<endpoint>` (the path after `/proxy/models/`) → (project, endpoint)."""
    project, _, endpoint = rest.partition("/")
    return project, endpoint.strip("/")


async def project_id(db: Database, name: str) -> str | None:
    """The id the caller's membership is checked against; None for an unknown project."""
    async with db.session() as s:
        return (
            await s.execute(select(t.Project.id).where(t.Project.name == name))
        ).scalar_one_or_none()


def endpoint_for(endpoint: str, method: str) -> str:
    """`LIST` for a listing, else the completions route a POST asks for; anything else is an
    error that says what is served."""
    if endpoint == LIST and method in ("GET", "HEAD"):
        return LIST
    if endpoint not in ROUTES:
        raise HTTPError(
            404,
            f"Unknown model endpoint /{endpoint}; use /models, /chat/completions or /completions",
            "resource_not_exists",
        )
    if method != "POST":
        raise HTTPError(405, f"/{endpoint} accepts POST only", "method_not_allowed")
    return endpoint


def model_list(project: str, models: list[tuple[str, str]]) -> dict[str, Any]:
    """The `/models` answer in OpenAI's shape, for (model name, run name) pairs."""
    data = [
        {"id": name, "object": "model", "created": int(time.time()), "owned_by": project}
        for name, _ in models
    ]
    return {"object": "list", "data": data}


def model_name(body: bytes) -> str:
    """The `model` of a completions request's JSON body."""
    try:
        name = json.loads(body or b"{}").get("model")
    except (ValueError, AttributeError):
        name = None
    if not isinstance(name, str) or not name:
        raise HTTPError(400, "The request body must be JSON with a `model`", "invalid_request")
    return name


async def resolve(
    registry: Registry, project: str, models: list[tuple[str, str]], body: bytes, endpoint: str
) -> tuple[Service, str]:
    """The service that serves the body's model and the path to forward to on its replicas."""
    name = model_name(body)
    run = next((r for n, r in models if n == name), None)
    svc = await registry.service(project, run) if run is not None else None
    if svc is None or not svc.active or svc.model is None:
        raise HTTPError(404, f"Model {name} not found in project {project}", "resource_not_exists")
    prefix = str(svc.model.get("prefix") or "/v1").rstrip("/")
    return svc, f"{prefix}/{endpoint}"
