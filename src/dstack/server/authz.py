"""Who may call what: ONE table from every route (method + path template, as FastAPI declares
it) to the rule that guards it, and the pure decision that applies a rule to a caller.

Why one table: access decided in each router drifts (a plain member could stop the admin's run
and delete the `local` fleet). `routers/deps.py:enforce` looks the matched route up here before
any handler runs; a route without an entry is refused (and fails the authorization matrix test),
so a new route cannot ship open by accident.

A new route declares its rule by adding `(METHOD, "/path/{template}"): Rule(Need.X)` to `RULES`
(method `WS` for a WebSocket). Handlers then read the caller from `deps.get_user` or
`deps.project_access`, which only return what `enforce` already decided.

Roles (the original's, server.md §2): the global admin passes every rule; in a project, `admin`
> `manager` > `user`. Project admins manage backends, gateways, project settings and fleets on
hosts the project does not rent (SSH fleets, the server's own machine); managers manage members
and secrets; users run, stop and delete any run of the project (runs are shared work in a team),
manage cloud fleets and volumes and read logs and events.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

ROLES = ("user", "manager", "admin")  # ascending


class Need(str, Enum):
    PUBLIC = "public"  # anyone, no token (holds no data)
    SIGNED_IN = "signed_in"  # any active user; the handler shows only the caller's own data
    GLOBAL_ADMIN = "global_admin"
    PROJECT_USER = "project_user"  # member of `{project_name}` with at least this role
    PROJECT_MANAGER = "project_manager"
    PROJECT_ADMIN = "project_admin"
    # Prometheus scrapes: a global admin, or anyone when the server's config makes them public.
    METRICS = "metrics"


PROJECT_NEEDS = {Need.PROJECT_USER: "user", Need.PROJECT_MANAGER: "manager",
                 Need.PROJECT_ADMIN: "admin"}  # fmt: skip


@dataclass(frozen=True)
class Rule:
    need: Need
    # Any signed-in user may also read a public project (only `projects/{p}/get` says so).
    public_read: bool = False
    # Members below `need` may still act on themselves: join a public project as `user`, leave
    # a project. The handler narrows what they may do with `self_service_allowed`.
    self_service: bool = False
    # Fleets on hosts the project does not rent need project admin even where users may manage
    # cloud fleets; the handler asks `host_fleet_role_ok` per fleet.
    host_fleets_need_admin: bool = False


P = "/api/project/{project_name}"
PS = "/api/projects/{project_name}"
_USER = Rule(Need.PROJECT_USER)
_MANAGER = Rule(Need.PROJECT_MANAGER)
_ADMIN = Rule(Need.PROJECT_ADMIN)
_FLEET_WRITE = Rule(Need.PROJECT_USER, host_fleets_need_admin=True)
_SIGNED_IN = Rule(Need.SIGNED_IN)
_GLOBAL = Rule(Need.GLOBAL_ADMIN)
_PUBLIC = Rule(Need.PUBLIC)

RULES: dict[tuple[str, str], Rule] = {
    # The server itself and the web UI's static files: no data.
    ("GET", "/healthcheck"): _PUBLIC,
    ("POST", "/api/server/get_info"): _PUBLIC,
    ("GET", "/"): _PUBLIC,
    ("GET", "/ui/{asset:path}"): _PUBLIC,
    ("GET", "/metrics"): Rule(Need.METRICS),
    # FastAPI's own pages (not in the schema): the API's shape, no data.
    ("GET", "/api/docs"): _PUBLIC,
    ("GET", "/api/docs/oauth2-redirect"): _PUBLIC,
    ("GET", "/api/openapi.json"): _PUBLIC,
    # Users: each user sees themself; the global admin manages everyone.
    ("POST", "/api/users/get_my_user"): _SIGNED_IN,
    ("POST", "/api/users/list"): _GLOBAL,
    ("POST", "/api/users/get_user"): _GLOBAL,
    ("POST", "/api/users/create"): _GLOBAL,
    ("POST", "/api/users/update"): _GLOBAL,
    ("POST", "/api/users/refresh_token"): _GLOBAL,
    ("POST", "/api/users/delete"): _GLOBAL,
    # Projects: any user creates one (and becomes its admin); lists show own and public ones.
    ("POST", "/api/projects/list"): _SIGNED_IN,
    ("POST", "/api/projects/create"): _SIGNED_IN,
    ("POST", "/api/projects/delete"): _SIGNED_IN,  # each named project: project admin (below)
    ("POST", f"{PS}/get"): Rule(Need.PROJECT_USER, public_read=True),
    ("POST", f"{PS}/update"): _ADMIN,
    ("POST", f"{PS}/set_members"): _MANAGER,
    ("POST", f"{PS}/add_members"): Rule(Need.PROJECT_MANAGER, self_service=True),
    ("POST", f"{PS}/remove_members"): Rule(Need.PROJECT_MANAGER, self_service=True),
    # Across projects: the handler lists the caller's projects only.
    ("POST", "/api/runs/list"): _SIGNED_IN,
    ("POST", "/api/fleets/list"): _SIGNED_IN,
    ("POST", "/api/volumes/list"): _SIGNED_IN,
    ("POST", "/api/events/list"): _SIGNED_IN,  # project in the body: `require_project` below
    ("POST", "/api/backends/list_types"): _SIGNED_IN,
    # Runs, logs, code, offers: project users (any member may stop or delete any run).
    ("POST", f"{P}/runs/get_plan"): _USER,
    ("POST", f"{P}/runs/apply"): _USER,
    ("POST", f"{P}/runs/get"): _USER,
    ("POST", f"{P}/runs/stop"): _USER,
    ("POST", f"{P}/runs/delete"): _USER,
    ("WS", f"{P}/runs/{{run_name}}/ssh"): _USER,
    ("POST", f"{P}/logs/poll"): _USER,
    ("GET", f"{P}/metrics/job/{{run_name}}"): _USER,
    ("POST", f"{P}/repos/upload_code"): _USER,
    ("POST", f"{P}/offers/list"): _USER,
    ("POST", f"{P}/gpus/list"): _USER,
    # Fleets: users for cloud fleets, admins for hosts the project does not rent.
    ("POST", f"{P}/fleets/list"): _USER,
    ("POST", f"{P}/fleets/get"): _USER,
    ("POST", f"{P}/fleets/get_plan"): _USER,
    ("POST", f"{P}/fleets/apply"): _FLEET_WRITE,
    ("POST", f"{P}/fleets/delete"): _FLEET_WRITE,
    ("POST", f"{P}/fleets/delete_instances"): _FLEET_WRITE,
    # Volumes: users.
    ("POST", f"{P}/volumes/list"): _USER,
    ("POST", f"{P}/volumes/get"): _USER,
    ("POST", f"{P}/volumes/get_plan"): _USER,
    ("POST", f"{P}/volumes/create"): _USER,
    ("POST", f"{P}/volumes/delete"): _USER,
    # Gateways and backends: project admins (a backend's config holds credentials).
    ("POST", f"{P}/gateways/list"): _USER,
    ("POST", f"{P}/backends/list"): _ADMIN,
    ("POST", f"{P}/backends/{{backend_name}}/config_info"): _ADMIN,
    ("POST", f"{P}/backends/{{backend_name}}/get_yaml"): _ADMIN,
    ("POST", f"{P}/backends/create"): _ADMIN,
    ("POST", f"{P}/backends/update"): _ADMIN,
    ("POST", f"{P}/backends/delete"): _ADMIN,
    ("POST", f"{P}/backends/create_yaml"): _ADMIN,
    ("POST", f"{P}/backends/update_yaml"): _ADMIN,
    # Secrets: users list names (and use values in runs); managers read and change values.
    ("POST", f"{P}/secrets/list"): _USER,
    ("POST", f"{P}/secrets/get"): _MANAGER,
    ("POST", f"{P}/secrets/create_or_update"): _MANAGER,
    ("POST", f"{P}/secrets/delete"): _MANAGER,
    # The service proxy (not a FastAPI route; proxy/handler.py applies it to services with
    # `auth: true`): members of the service's project.
    ("PROXY", "/proxy/services/{project_name}/{run_name}/{path:path}"): _USER,
    ("PROXY", "/proxy/models/{project_name}/{path:path}"): _USER,
}
PROXY_SERVICE = RULES[("PROXY", "/proxy/services/{project_name}/{run_name}/{path:path}")]


class Verdict(str, Enum):
    ALLOW = "allow"
    NOT_AUTHENTICATED = "not_authenticated"  # 403, the same for no, unknown or wrong token
    HIDDEN = "hidden"  # not a member: "Project X not found", as for a missing project
    FORBIDDEN = "forbidden"  # a member whose role is too low: 403 naming the role needed
    SELF_SERVICE = "self_service"  # allowed only on the caller themself (Rule.self_service)


@dataclass(frozen=True)
class Caller:
    """What a decision needs to know about the signed-in user (None: no valid token)."""

    global_admin: bool
    project_role: str | None = None  # in the route's project; None when not a member
    project_public: bool = False


def rule_for(method: str, path_template: str) -> Rule | None:
    return RULES.get((method.upper(), path_template))


def role_at_least(role: str | None, needed: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def decide(
    rule: Rule, caller: Caller | None, project_exists: bool = True, metrics_public: bool = False
) -> Verdict:
    """The verdict for one call. Pure: `deps.enforce` gathers the facts, the proxy uses the same
    function. `metrics_public`: the server's configuration opens `/metrics` to scrapers
    without a token (whoever adds that setting sets `app.state.metrics_public`)."""
    if rule.need is Need.PUBLIC or (rule.need is Need.METRICS and metrics_public):
        return Verdict.ALLOW
    if caller is None:
        return Verdict.NOT_AUTHENTICATED
    if rule.need is Need.SIGNED_IN or caller.global_admin:
        return Verdict.ALLOW if project_exists or rule.need not in PROJECT_NEEDS else Verdict.HIDDEN
    if rule.need in (Need.GLOBAL_ADMIN, Need.METRICS):
        return Verdict.FORBIDDEN
    if not project_exists:
        return Verdict.HIDDEN
    needed = PROJECT_NEEDS[rule.need]
    if role_at_least(caller.project_role, needed):
        return Verdict.ALLOW
    if rule.self_service and (caller.project_role is not None or caller.project_public):
        return Verdict.SELF_SERVICE
    if caller.project_role is not None:
        return Verdict.FORBIDDEN
    if rule.public_read and caller.project_public:
        return Verdict.ALLOW
    return Verdict.HIDDEN


def self_service_allowed(
    caller_name: str, is_member: bool, project_public: bool, adding: bool,
    changes: list[tuple[str, str | None]],
) -> bool:  # fmt: skip
    """A member below manager (or a non-member of a public project) may only join as `user`
    (public projects) or leave: one change, on themself."""
    if len(changes) != 1 or changes[0][0] != caller_name:
        return False
    if adding:
        return project_public and not is_member and changes[0][1] in (None, "user")
    return is_member


def host_fleet_role_ok(rule: Rule, global_admin: bool, project_role: str | None,
                       on_unrented_hosts: bool) -> bool:  # fmt: skip
    """Whether a fleet write may touch this fleet: SSH fleets and the server's own machine
    need project admin where the route lets users manage cloud fleets."""
    if not (rule.host_fleets_need_admin and on_unrented_hosts) or global_admin:
        return True
    return role_at_least(project_role, "admin")


# -- failed authentication, limited per client address ---------------------------------------
# Guessing tokens costs a wait. Only failures count (a busy client with a valid token is never
# slowed), the window slides, and a limited address is refused before its token is looked at
# (answering a good token differently would let guessing go on). The API's gate and the service
# proxy share one limiter.

MAX_FAILURES = 10
WINDOW_SECONDS = 60.0
# The one wording of a refused token (the gate, the proxy and the request guard): unknown,
# wrong and deactivated tokens are answered alike.
# The ASGI scope key under which the request guard (guard.py) leaves (token, user row) for a
# token it accepted, so the gate (routers/deps.py) does not look the same token up again.
AUTHENTICATED = "dstack.authenticated"
# Where the request guard hands the session it looked the token up in to the request's
# `get_session` (routers/deps.py): (the entered context manager, the session), one per request.
GUARD_SESSION = "dstack.guard_session"
MISSING_TOKEN = "Missing bearer token: send `Authorization: Bearer <token>`"
BAD_TOKEN = "Invalid token"
MAX_ADDRESSES = 10_000  # memory bound: the oldest address is forgotten first


class AuthLimiter:
    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float]:
        now = self.clock()
        q = self._failures.get(address)
        if q is None:
            return deque()
        while q and now - q[0] >= self.window:
            q.popleft()
        if not q:
            del self._failures[address]
        return q

    def blocked_for(self, address: str) -> int:
        """Seconds until this address may try again (0: it may now)."""
        q = self._recent(address)
        if len(q) < self.max_failures:
            return 0
        return max(1, math.ceil(self.window - (self.clock() - q[0])))

    def failed(self, address: str) -> None:
        if address not in self._failures and len(self._failures) >= MAX_ADDRESSES:
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(address, deque()).append(self.clock())


def public_paths() -> frozenset[str]:
    """The fixed paths (no path parameters) that need no token, from the one table: the
    request guard lets their bodies through without looking for a token."""
    return frozenset(
        path
        for (_, path), rule in RULES.items()
        if rule.need is Need.PUBLIC and "{" not in path
    )
