"""The FastAPI application: routers, error mapping, and the lifespan that migrates the
database, bootstraps the first user and starts the reconcilers."""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from pydantic.warnings import UnsupportedFieldAttributeWarning
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from dstack.errors import (
    ConfigurationError,
    ResourceNotExistsError,
    ServerClientError,
    StaleResourceError,
)
from dstack.models.server_config import ServerConfig
from dstack.server.backends import configure_projects, create_backends
from dstack.server.backends.base import OfferCache
from dstack.server.db.cluster import ClusterLease, startup_lock
from dstack.server.db.migrate import migrate
from dstack.server.db.notify import PgWakes
from dstack.server.db.session import Database, sqlite_file
from dstack.server.guard import RequestGuard
from dstack.server.http_errors import install_fault_handlers, short
from dstack.server.proxy import upstream
from dstack.server.proxy.handler import MODELS, SERVICES, Proxy, ProxyConfig
from dstack.server.reconcilers.agents import AgentRegistry
from dstack.server.routers import backends as backends_router
from dstack.server.routers import (
    events,
    fleets,
    gateways,
    logs,
    offers,
    projects,
    repos,
    runs,
    secrets,
    server,
    ssh_relay,
    ui,
    users,
    volumes,
)
from dstack.server.routers import metrics as metrics_router
from dstack.server.routers import prometheus as prometheus_router
from dstack.server.routers.deps import AuthError, enforce
from dstack.server.server_config import config_path, load_server_config
from dstack.server.services import metrics_listener, state_dir, telemetry
from dstack.server.services.backend_configs import sync_server_config
from dstack.server.services.bootstrap import BootstrapResult, bootstrap
from dstack.server.services.codes import CodeTooLargeError
from dstack.server.services.context import ServerContext
from dstack.server.services.crypto import Box, keys_from_config
from dstack.server.services.hosts import upstream as host_upstream
from dstack.server.services.key_check import check_stored_values
from dstack.server.settings import Settings
from dstack.version import __version__

log = logging.getLogger(__name__)


def _detail(msg: str, code: str, field: str | None = None) -> dict:
    return {"detail": [{"msg": msg, "code": code, "field": field}]}


async def _answer(conn: HTTPConnection, body: dict, status: int, headers: dict | None = None):  # noqa: ANN202
    """The JSON answer; on a WebSocket, the same as a denial before the upgrade (or, where the
    server has no denial responses, a close with 4000 + status)."""
    response = JSONResponse(body, status_code=status, headers=headers)
    if isinstance(conn, WebSocket):
        if "websocket.http.response" in conn.scope.get("extensions", {}):
            await conn.send_denial_response(response)
        else:
            await conn.accept()
            await conn.close(4000 + status, body["detail"][0]["msg"][:120])
        return None
    return response


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AuthError)
    async def _auth(conn: HTTPConnection, e: AuthError):  # noqa: ANN202
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        return await _answer(conn, _detail(e.message, e.code), e.status, headers)

    @app.exception_handler(CodeTooLargeError)
    async def _too_large(conn: HTTPConnection, e: CodeTooLargeError):  # noqa: ANN202
        return await _answer(conn, _detail(e.message, e.code), 413)

    @app.exception_handler(StaleResourceError)
    async def _stale(conn: HTTPConnection, e: StaleResourceError):  # noqa: ANN202
        return await _answer(conn, _detail(short(e.message, 1000), e.code, e.field), 409)

    @app.exception_handler(ServerClientError)
    async def _client(conn: HTTPConnection, e: ServerClientError):  # noqa: ANN202
        code = "resource_not_exists" if isinstance(e, ResourceNotExistsError) else e.code
        return await _answer(conn, _detail(short(e.message, 1000), code, e.field), 400)

    install_fault_handlers(app)


# Every route, including those of routers added later, passes the one access gate (rules in
# `authz.RULES`); the authorization matrix test checks that none escapes it.
GATE = [Depends(enforce)]


# The reconcilers, sweepers and the service prober begin once the server has answered its
# first request, or after this long without one: their first passes (first-time SQL
# compilation, lazy imports, lease writes) would otherwise run interleaved with the requests of
# clients waiting for the restart, delaying the first answer by a few hundred milliseconds on a
# busy machine.
BACKGROUND_GRACE = 1.0


async def _open_after_grace(gate: asyncio.Event) -> None:
    await asyncio.sleep(BACKGROUND_GRACE)
    gate.set()


async def _after(gate: asyncio.Event, loop: Callable[[], Awaitable[None]]) -> None:
    await gate.wait()
    await loop()


def _background_loops(
    ctx: ServerContext, agents: AgentRegistry
) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    """The reconcilers and sweepers, by name. Imported here, once the gate opens: their modules
    (~25 ms of imports) are not needed for the first answer. A reconciler's first pass claims
    all due work, so it misses nothing that was woken before it existed."""
    from dstack.server.reconcilers.fleets import FleetReconciler
    from dstack.server.reconcilers.instance_worker import InstanceReconciler
    from dstack.server.reconcilers.job_worker import JobReconciler
    from dstack.server.reconcilers.run_worker import RunReconciler
    from dstack.server.reconcilers.sweeper import InventorySweeper, MetricsSweeper
    from dstack.server.reconcilers.volumes import VolumeReconciler

    reconcilers = [
        RunReconciler(ctx),
        JobReconciler(ctx, agents),
        InstanceReconciler(ctx, agents),
        FleetReconciler(ctx),
        VolumeReconciler(ctx, agents),
    ]
    loops = [(r.kind, r.run_forever) for r in reconcilers]
    loops += [("inventory", InventorySweeper(ctx).run_forever),
              ("metrics", MetricsSweeper(ctx).run_forever)]  # fmt: skip
    return loops


async def _start_loops(
    ctx: ServerContext, agents: AgentRegistry, tasks: list[asyncio.Task[None]]
) -> None:
    """Each loop as a task of its own, added to `tasks` (the ones the shutdown cancels)."""
    for name, loop in _background_loops(ctx, agents):
        tasks.append(asyncio.create_task(loop(), name=name))


async def start(
    ctx: ServerContext,
    server_config: ServerConfig | None = None,
    served: asyncio.Event | None = None,
) -> tuple[BootstrapResult, list[asyncio.Task[None]]]:
    """`served`: set when the server has answered a request (or `BACKGROUND_GRACE` passed);
    background loops wait for it. None: they start at once."""
    # config.yml first: an invalid file stops the start before anything is written.
    config_file = config_path(ctx.settings.server_dir)
    if server_config is None:
        server_config = load_server_config(config_file)
    ctx.box.configure(keys_from_config(server_config.encryption_keys()))
    state_dir.secure(ctx.settings.server_dir, sqlite_file(ctx.settings.database_url))
    # One server at a time migrates and bootstraps (several replicas may start together).
    async with startup_lock(ctx.db):
        await migrate(ctx.db.engine)
    async with ctx.db.session() as s:
        try:  # a key removed too early, or changed: stop here, naming it
            await check_stored_values(s, ctx.box, config_file)
        except ConfigurationError as e:
            log.error("Invalid server configuration: %s", e)
            raise
    ctx.backends = await create_backends(ctx.settings, ctx.box.decrypt)
    async with startup_lock(ctx.db):
        result = await bootstrap(ctx)
        synced = await sync_server_config(ctx, server_config)
    await configure_projects(ctx.backends, synced)
    result.backends = ctx.backends.describe()
    for failure in ctx.backends.failures:
        log.warning(
            "backend %s of project %s is not configured: %s",
            failure.type,
            failure.project_name,
            failure.reason,
        )
    ctx.offer_cache = OfferCache()
    # The proxy and the prober reach replicas the way each instance's backend can.
    upstream.install(lambda inst, port: host_upstream(ctx, inst, port))
    agents = AgentRegistry(ctx)
    ctx.agents = agents  # type: ignore[attr-defined]
    if served is None:
        served = asyncio.Event()
        served.set()
    tasks = [asyncio.create_task(_open_after_grace(served), name="grace")]
    start_loops = lambda: _start_loops(ctx, agents, tasks)  # noqa: E731
    tasks.append(asyncio.create_task(_after(served, start_loops), name="background"))
    if ctx.settings.metrics_address:  # bound now: a bad or taken address stops the start
        listener = await metrics_listener.start(ctx.db, ctx.settings.metrics_address)
        tasks.append(asyncio.create_task(metrics_listener.serve(listener), name="prometheus"))
    return result, tasks


class ProxyMiddleware:
    """Sends `/proxy/services/...` and `/proxy/models/...` to the proxy before FastAPI routing,
    so a proxied request pays for none of it."""

    def __init__(
        self, app: object, proxy: Proxy, on_answer: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.proxy = proxy
        self.on_answer = on_answer  # after each API answer (opens `start`'s background gate)

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        if scope["type"] in ("http", "websocket") and (
            scope["path"].startswith(SERVICES) or scope["path"].startswith(MODELS)
        ):
            await self.proxy(scope, receive, send)
            return
        await self.app(scope, receive, send)  # type: ignore[operator]
        if self.on_answer is not None and scope["type"] == "http":
            self.on_answer()


def asgi_entry(app: FastAPI) -> ProxyMiddleware:
    """What uvicorn serves: proxied paths go straight to the proxy, ahead of even Starlette's
    own middleware; everything else (the API, lifespan) to the FastAPI app. The FastAPI app
    keeps the same middleware inside, so it also proxies when served on its own."""
    return ProxyMiddleware(app, app.state.proxy)


def create_proxy(ctx: ServerContext) -> Proxy:
    st = ctx.settings
    config = ProxyConfig(
        read_timeout=st.service_client_timeout,
        max_body=st.service_max_body,
        hold_seconds=st.service_hold_seconds,
        unhealthy_cooldown=st.service_unhealthy_cooldown,
    )
    return Proxy(
        ctx.db,
        config,
        writer=ctx.instance_id,
        wake_runs=lambda: ctx.hub.wake("runs"),
        on_request=telemetry.proxy_request,
    )


# How long one step of the shutdown may take. A step that hangs must not keep the server (or a
# test's client) from stopping; the log names it and, for a task, where it was stuck.
SHUTDOWN_STEP_SECONDS = 10.0


async def _bounded(what: str, step: Awaitable[object]) -> None:
    try:
        await asyncio.wait_for(step, SHUTDOWN_STEP_SECONDS)
    except TimeoutError:
        log.warning("shutdown: %s did not finish within %.0f s", what, SHUTDOWN_STEP_SECONDS)
    except Exception:
        log.exception("shutdown: %s failed", what)


async def _stop_tasks(tasks: list[asyncio.Task[object]]) -> None:
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_STEP_SECONDS)
    for task in pending:
        where = io.StringIO()
        task.print_stack(file=where)
        name = task.get_name()
        log.warning("shutdown: task %s ignored its cancellation:\n%s", name, where.getvalue())


class _Served:
    """Whether the server has answered a request since its lifespan began."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None

    def set(self) -> None:
        if self.event is not None:
            self.event.set()

    def is_set(self) -> bool:
        return self.event is not None and self.event.is_set()


def create_app(
    settings: Settings, on_ready: object = None, server_config: ServerConfig | None = None
) -> FastAPI:
    # Models build their validators when first used (`defer_build`, models/wire.py), so
    # FastAPI's validator of a route's body (the model annotated with the parameter's
    # `Field(alias=...)`) is built at the route's first request, where pydantic warns that the
    # alias does nothing; FastAPI silences that warning when it builds one at registration.
    warnings.filterwarnings("ignore", category=UnsupportedFieldAttributeWarning)
    ctx = ServerContext(
        settings=settings,
        db=Database(settings.database_url),
        box=Box(settings.data_dir / "encryption.key"),
    )
    proxy = create_proxy(ctx)
    # Replicas on one database: one of them probes; wakes reach the others (Postgres).
    probes = ClusterLease(ctx.db, "probes", ctx.instance_id, settings.lease_seconds)
    served = _Served()

    async def probe_here() -> bool:
        return served.is_set() and await probes.held()

    proxy.prober.gate = probe_here
    wakes = None
    if not ctx.db.is_sqlite:
        wakes = PgWakes(ctx.db.engine, ctx.instance_id, ctx.hub.wake_local)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if wakes is not None:
            ctx.hub.forward = wakes.send
            await wakes.start()
        served.event = asyncio.Event()  # this loop's (an app may be started more than once)
        result, tasks = await start(ctx, server_config, served.event)
        await proxy.start()
        app.state.bootstrap = result
        if callable(on_ready):
            on_ready(result)
        try:
            yield
        finally:
            await _bounded("the service proxy", proxy.stop())
            with suppress(Exception):
                await _bounded("the probes lease", probes.release())  # another replica probes
            if wakes is not None:
                await _bounded("the cross-replica wakes", wakes.stop())
            await _stop_tasks(tasks)
            await _bounded("the agent connections", ctx.agents.close())  # type: ignore[attr-defined]
            for backend in ctx.backends.all():
                await _bounded(f"backend {type(backend).__name__}", backend.close())
            upstream.install(None)
            await _bounded("the database engine", ctx.db.close())

    app = FastAPI(
        title="dstack server",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
        dependencies=GATE,
    )
    app.state.ctx = ctx
    app.state.proxy = proxy
    app.state.wakes = wakes
    app.state.auth_limiter = proxy.auth_limiter  # one count of failures for the API and proxy
    # Added first, so it runs inside the proxy middleware: proxied bodies pass untouched.
    app.add_middleware(
        RequestGuard,
        db=ctx.db,
        max_body=settings.api_max_body,
        upload_limit=settings.code_upload_limit,
    )
    app.add_middleware(ProxyMiddleware, proxy=proxy, on_answer=served.set)
    install_error_handlers(app)
    # One router per resource kind.
    for module in (server, users, projects, runs, logs, fleets, volumes, gateways, offers,
                   events, repos, ssh_relay, backends_router, secrets, metrics_router,
                   prometheus_router):  # fmt: skip
        app.include_router(module.router)
    ui.install(app)
    return app
