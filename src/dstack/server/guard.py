"""The API's front door, ahead of FastAPI: a request body is bounded and its sender
authenticated before a byte of the body is read.

FastAPI parses the body before it resolves dependencies, so without this a 300 MB JSON body with
no token is read (and held) before the 403. Here:

- a body whose `Content-Length` is over the route's limit is answered 413 at once, unread;
- a chunked (or lying) body is counted while it streams and cut off at the limit (413);
- a request to the API that needs a user is refused 403 from its headers alone (missing or
  unknown bearer token), before its body is read;
- a JSON body that carries NUL (`\\u0000`) in any string is refused 422: no text column on any
  database stores it safely (Postgres refuses it with a 500), and no name needs it.

The service proxy (`/proxy/services/...`, `/proxy/models/...`) is not behind this door: it sits in
front of it (app.ProxyMiddleware) and streams bodies to the replicas under its own, larger limit
(`DSTACK_SERVICE_MAX_BODY`), since a service takes whatever its users upload.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException

from dstack.server import authz
from dstack.server.db import tables as t
from dstack.server.db.session import Database
from dstack.server.services.users import user_by_token, user_with_project

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Reachable with no token: what the authorization table says is public.
PUBLIC_PATHS = authz.public_paths()
UPLOAD_SUFFIX = "/repos/upload_code"
# Room for the multipart framing around the archive itself.
MULTIPART_OVERHEAD = 64 * 1024
# `\u0000` not itself escaped (preceded by an even number of backslashes).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# The project a path names, as the routes' `{project_name}` parameter matches it.
_PROJECT_PATH = re.compile(r"^/api/projects?/([^/]+)/")


class BodyTooLarge(HTTPException):
    """A body went over its limit while it was being read. An HTTPException so that FastAPI's
    body parsing passes it on as it is (it turns any other error into a 400)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int) -> str:
    return f"Request body too large: the limit is {limit} bytes"


def _json(status: int, msg: str, code: str, headers: list[tuple[bytes, bytes]] | None = None):  # noqa: ANN202
    body = json.dumps({"detail": [{"msg": msg, "code": code, "field": None}]}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *(headers or []),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


async def respond(
    send: Send, status: int, msg: str, code: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    start, body = _json(status, msg, code, headers)
    await send(start)
    await send(body)


class RequestGuard:
    def __init__(self, app: Any, db: Database, max_body: int, upload_limit: int) -> None:
        self.app = app
        self.db = db
        self.max_body = max_body
        self.upload_limit = upload_limit

    def limit_for(self, path: str) -> int:
        if path.endswith(UPLOAD_SUFFIX):
            return (self.upload_limit or self.max_body) + MULTIPART_OVERHEAD
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        limit = self.limit_for(scope["path"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await respond(send, 413, too_large_message(limit), "body_too_large")
            return
        is_json = headers.get(b"content-type", b"").startswith(b"application/json")
        try:
            if scope["path"] not in PUBLIC_PATHS:
                refusal = await self.refusal(scope, headers.get(b"authorization", b""), is_json)
                if refusal:
                    await respond(send, *refusal)
                    return
            await self._serve(scope, receive, send, limit, is_json)
        finally:
            await close_handed_session(scope)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, limit: int, is_json: bool
    ) -> None:
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if is_json:
                body = await read_capped(receive, limit)
                if _NUL_ESCAPE.search(body) or b"\x00" in body:
                    await respond(send, 422, "NUL characters are not allowed in input", "nul")
                    return
                receive = replay(body, receive)
            else:
                receive = capped(receive, limit)
            await self.app(scope, receive, tracked_send)
        except BodyTooLarge as e:
            if started:
                raise
            await respond(send, 413, str(e.detail), "body_too_large")

    async def refusal(
        self, scope: Scope, header: bytes, hand_over: bool = False
    ) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        """The gate's answer to a missing, unknown or rate-limited token (routers/deps.py),
        given before the body is read: the same words, and the same failure count.

        `hand_over`: an accepted token's session stays open for the route (`get_session`
        takes it and closes it as it would its own), one session a request instead of two.
        Only for a JSON body, which is read at once and bounded by `max_body`: an upload
        streams for as long as its sender takes, and must not hold a connection meanwhile."""
        limiter = _limiter(scope)
        address = (scope.get("client") or ("unknown", 0))[0]
        wait = limiter.blocked_for(address) if limiter else 0
        if wait:
            retry = [(b"retry-after", str(wait).encode())]
            return 429, "Too many failed authentication attempts", "not_authenticated", retry
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return 403, authz.MISSING_TOKEN, "not_authenticated", []
        token = token.strip()
        # A path naming a project: its row and the caller's role come with the token's user,
        # one query, for the gate to use in the same session (not when it is not handed on).
        named = _PROJECT_PATH.match(scope["path"]) if hand_over else None
        project: tuple[str, t.Project | None, str | None] | None = None
        cm = self.db.session()
        s = await cm.__aenter__()
        try:
            if named is None:
                user = await user_by_token(s, token)
            else:
                found = await user_with_project(s, token, named.group(1))
                user = found[0] if found else None
                project = (named.group(1), found[1], found[2]) if found else None
        except BaseException:
            await cm.__aexit__(None, None, None)
            raise
        if user is None or not hand_over:
            await cm.__aexit__(None, None, None)
        else:
            scope[authz.GUARD_SESSION] = (cm, s)
        if user is None:
            if limiter:
                limiter.failed(address)
            return 403, authz.BAD_TOKEN, "not_authenticated", []
        # The gate (routers/deps.authenticate) takes the user found here for the same token
        # instead of looking it up again (and the project, for the same name).
        scope[authz.AUTHENTICATED] = (token, user, project)
        return None


async def close_handed_session(scope: Scope) -> None:
    """Close the guard's session if no route took it (a 404, a body FastAPI refused)."""
    handed = scope.pop(authz.GUARD_SESSION, None)
    if handed is not None:
        await handed[0].__aexit__(None, None, None)


def _limiter(scope: Scope) -> authz.AuthLimiter | None:
    app = scope.get("app")
    return getattr(getattr(app, "state", None), "auth_limiter", None)


async def read_capped(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """The body, read once, handed to the app; later calls wait for a disconnect as usual."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def capped(receive: Receive, limit: int) -> Receive:
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise BodyTooLarge(limit)
        return message

    return counted
