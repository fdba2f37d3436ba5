"""Authentication and access for every endpoint. `enforce` runs before each route (an app-wide
dependency): it finds the matched route's rule in `authz.RULES`, checks the bearer token (failed
attempts are rate-limited per client address) and the caller's role, and leaves the outcome on
the request. `get_user` and `project_access` only read that outcome; no router decides access."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from dstack.errors import ResourceNotExistsError
from dstack.server import authz
from dstack.server.authz import AuthLimiter
from dstack.server.db import tables as t
from dstack.server.services.context import ServerContext
from dstack.server.services.users import get_project, project_and_role, user_by_token

MISSING_TOKEN = authz.MISSING_TOKEN
BAD_TOKEN = authz.BAD_TOKEN


class AuthError(Exception):
    """403 `not_authenticated`; `status` 429 (with `retry_after`) when the address is limited."""

    def __init__(self, message: str, status: int = 403, retry_after: int | None = None,
                 code: str = "not_authenticated") -> None:  # fmt: skip
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.code = code


# The small dependencies are `async def` although they never wait: FastAPI runs a plain `def`
# dependency in its thread pool, a thread hop per dependency per request (three on runs/list).
async def get_ctx(request: HTTPConnection) -> ServerContext:
    return request.app.state.ctx


async def get_session(
    conn: HTTPConnection, ctx: ServerContext = Depends(get_ctx)
) -> AsyncIterator[AsyncSession]:
    """The request's one session: the one the request guard looked the token up in, when it
    handed it over (guard.py), else a new one; closed when the request is done with it."""
    handed = conn.scope.pop(authz.GUARD_SESSION, None)
    if handed is None:
        async with ctx.db.session() as s:
            yield s
        return
    cm, s = handed
    try:
        yield s
    finally:
        await cm.__aexit__(None, None, None)


@dataclass
class Access:
    """What `enforce` found: the caller (None on public routes without a token), the route's
    project and the caller's role in it, and how the rule let them through."""

    rule: authz.Rule
    user: t.User | None
    project: t.Project | None = None
    project_role: str | None = None
    verdict: authz.Verdict = authz.Verdict.ALLOW


def limiter(conn: HTTPConnection) -> AuthLimiter:
    state = conn.app.state
    if not hasattr(state, "auth_limiter"):
        state.auth_limiter = AuthLimiter()
    return state.auth_limiter


async def authenticate(conn: HTTPConnection, s: AsyncSession) -> t.User:
    """The token's active user. Unknown, wrong and deactivated tokens get one identical answer;
    an address with too many failures gets 429 before its token is even looked at."""
    address = conn.client.host if conn.client else "unknown"
    wait = limiter(conn).blocked_for(address)
    if wait:
        raise AuthError("Too many failed authentication attempts", 429, retry_after=wait)
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(MISSING_TOKEN)
    user = _guard_user(conn, s, token.strip()) or await user_by_token(s, token.strip())
    if user is None:
        limiter(conn).failed(address)
        raise AuthError(BAD_TOKEN)
    return user


def _guard_user(conn: HTTPConnection, s: AsyncSession, token: str) -> t.User | None:
    """The user RequestGuard found for this very token before the body was read (one lookup
    per request, not two), attached to the request's session."""
    found = conn.scope.get(authz.AUTHENTICATED)
    if not found or found[0] != token:
        return None
    user = found[1]
    s.add(user)  # the guard's session handed on, or detached from its closed one: no query
    return user


def _guard_project(
    conn: HTTPConnection, s: AsyncSession, name: str
) -> tuple[t.Project | None, str | None] | None:
    """The project and role RequestGuard read with the token, for this very name and in this
    session (the one it handed on: the same transaction as everything the route reads)."""
    found = conn.scope.get(authz.AUTHENTICATED)
    named = found[2] if found else None
    if named is None or named[0] != name or (named[1] is not None and named[1] not in s):
        return None
    if found[1] not in s:
        return None
    return named[1], named[2]


def _route_key(conn: HTTPConnection) -> tuple[str, str]:
    route = conn.scope.get("route")
    path = getattr(route, "path", None) or conn.scope.get("path", "")
    method = "WS" if conn.scope["type"] == "websocket" else conn.scope.get("method", "GET")
    return method, path


async def enforce(conn: HTTPConnection, s: AsyncSession = Depends(get_session)) -> Access:
    """The one gate (installed on the app in app.py)."""
    method, path = _route_key(conn)
    rule = authz.rule_for(method, path)
    if rule is None:
        raise AuthError(f"No access rule for {method} {path}", code="forbidden")
    metrics_public = bool(getattr(conn.app.state, "metrics_public", False))
    if authz.decide(rule, None, metrics_public=metrics_public) is authz.Verdict.ALLOW:
        access = Access(rule, None)  # public: no token needed, none looked at
    else:
        access = await _decide(conn, s, rule)
    conn.state.access = access
    return access


async def _decide(conn: HTTPConnection, s: AsyncSession, rule: authz.Rule) -> Access:
    user = await authenticate(conn, s)
    project_name = conn.path_params.get("project_name")
    project = role = None
    if project_name is not None and rule.need in authz.PROJECT_NEEDS:
        found = _guard_project(conn, s, project_name)
        project, role = found or await project_and_role(s, project_name, user.id)
    caller = authz.Caller(
        global_admin=user.global_role == "admin",
        project_role=role,
        project_public=bool(project and project.is_public),
    )
    verdict = authz.decide(rule, caller, project_exists=project is not None)
    _raise_unless_allowed(verdict, rule, project_name)
    return Access(rule, user, project, role, verdict)


def _raise_unless_allowed(
    verdict: authz.Verdict, rule: authz.Rule, project_name: str | None
) -> None:
    if verdict in (authz.Verdict.ALLOW, authz.Verdict.SELF_SERVICE):
        return
    if verdict is authz.Verdict.HIDDEN:
        raise ResourceNotExistsError(
            f"Project {project_name} not found", code="resource_not_exists"
        )
    if rule.need in authz.PROJECT_NEEDS:
        needed = authz.PROJECT_NEEDS[rule.need]
        raise AuthError(f"Requires the {needed} role in project {project_name}", code="forbidden")
    raise AuthError("Requires the global admin role", code="forbidden")


async def get_access(conn: HTTPConnection) -> Access:
    access = getattr(conn.state, "access", None)
    if access is None:  # the app is built without `enforce`: refuse rather than guess
        raise AuthError("Access was not checked", code="forbidden")
    return access


async def get_user(access: Access = Depends(get_access)) -> t.User:
    if access.user is None:
        raise AuthError(MISSING_TOKEN)
    return access.user


@dataclass
class ProjectAccess:
    user: t.User
    project: t.Project
    session: AsyncSession
    role: str | None = None
    rule: authz.Rule | None = None
    verdict: authz.Verdict = authz.Verdict.ALLOW


async def project_access(
    access: Access = Depends(get_access), s: AsyncSession = Depends(get_session)
) -> ProjectAccess:
    if access.user is None or access.project is None:
        raise AuthError("Access was not checked for a project", code="forbidden")
    return ProjectAccess(access.user, access.project, s, access.project_role, access.rule,
                         access.verdict)  # fmt: skip


async def require_project(s: AsyncSession, user: t.User, name: str, need: authz.Need) -> t.Project:
    """For the routes whose project comes in the body (events, project deletion): the same
    decision as `enforce`, with the table's needs."""
    project = await get_project(s, name)
    role = None
    if project is not None:
        member = await s.get(t.Member, (project.id, user.id))
        role = member.project_role if member else None
    caller = authz.Caller(global_admin=user.global_role == "admin", project_role=role)
    rule = authz.Rule(need)
    _raise_unless_allowed(authz.decide(rule, caller, project is not None), rule, name)
    assert project is not None
    return project
