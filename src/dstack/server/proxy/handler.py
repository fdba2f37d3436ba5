"""The server's proxy: `/proxy/services/<project>/<run>/...` and `/proxy/models/<project>/...`.

A plain ASGI handler in front of the API (not FastAPI routes), so a proxied request pays for
no routing, validation or database session: the service, its ready replicas and the caller's
token come from `Registry`'s short-lived cache. A replica is chosen by least outstanding
requests. Every forwarded request is counted for the autoscaler (`stats.py`); a request for a
service with no ready replica is held (bounded) while the autoscaler starts one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update

from dstack.models.wire import utcnow
from dstack.server import authz
from dstack.server.authz import AuthLimiter
from dstack.server.db import tables as t
from dstack.server.db.session import Database
from dstack.server.proxy import openai
from dstack.server.proxy.errors import HTTPError
from dstack.server.proxy.events import replica_event
from dstack.server.proxy.forward import (
    BodyTooLarge,
    ClientGone,
    RequestBody,
    UpstreamFailed,
    UpstreamTimeout,
    forward_http,
    forward_websocket,
    upstream_headers,
)
from dstack.server.proxy.http1 import Pool
from dstack.server.proxy.probes import Prober
from dstack.server.proxy.ratelimit import RateLimiter
from dstack.server.proxy.registry import Registry, Replica, Service
from dstack.server.proxy.stats import StatsRecorder

log = logging.getLogger(__name__)

# (project, run, outcome: "forwarded" or the proxy's error status, seconds) of one request.
RequestObserver = Callable[[str, str, str, float], None]

SERVICES = "/proxy/services/"
MODELS = "/proxy/models/"


@dataclass(frozen=True)
class ProxyConfig:
    read_timeout: float = 300.0  # DSTACK_SERVICE_CLIENT_TIMEOUT
    max_body: int = 64 * 1024 * 1024
    hold_seconds: float = 120.0  # how long a request waits for a replica to start
    cache_ttl: float = 1.0
    unhealthy_cooldown: float = 10.0
    probe_tick: float = 0.5


def _token_hash(scope: dict[str, Any]) -> str | None:
    for k, v in scope["headers"]:
        if k.lower() == b"authorization":
            scheme, _, token = v.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return hashlib.sha256(token.strip().encode()).hexdigest()
    return None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


async def _send_json(send: Any, status: int, body: Any, headers: dict[str, str] | None = None):
    data = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


class Proxy:
    def __init__(
        self,
        db: Database,
        config: ProxyConfig,
        writer: str,
        wake_runs: Callable[[], None] = lambda: None,
        on_request: RequestObserver = lambda *_: None,
    ) -> None:
        # Told of every request to a service (project, run, HTTP status, seconds): the
        # server's Prometheus counters (services/telemetry.py).
        self.on_request = on_request
        self.db = db
        self.config = config
        self.registry = Registry(db, config.cache_ttl, config.unhealthy_cooldown)
        self.stats = StatsRecorder(db, writer)
        self.limiter = RateLimiter()
        # Failed authentication per client address; the app shares it with the API's gate.
        self.auth_limiter = AuthLimiter()
        self.prober = Prober(db, config.probe_tick)
        self.outstanding: dict[str, int] = defaultdict(int)
        self._refused: dict[str, float] = {}  # job id -> until when to prefer other replicas
        self.wake_runs = wake_runs
        self.pool = Pool()  # the hot path
        self._flush_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="proxy-stats"),
            asyncio.create_task(self.prober.run_forever(), name="proxy-probes"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.stats.flush()
        await self.prober.aclose()
        await self.pool.close()

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), 1.0)
            self._flush_now.clear()
            try:
                if await self.stats.flush():
                    self.wake_runs()
            except Exception:  # noqa: BLE001 - counts are retried next tick; never die
                log.exception("flushing service stats failed")

    # -- entry ------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            if scope["path"].startswith(MODELS):
                await self._models(scope, receive, send)
            else:
                await self._service(scope, receive, send)
        except HTTPError as e:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": e.message[:120]})
                return
            body = {"detail": [{"msg": e.message, "code": e.code}]}
            await _send_json(send, e.status, body, e.headers)

    async def _authorize(self, scope: dict[str, Any], project_id: str) -> None:
        """The table's rule for the proxy (`authz.PROXY_SERVICE`), with the API's answers: one
        for unknown, wrong and deactivated tokens, 429 after too many failures."""
        address = (scope.get("client") or ("unknown",))[0]
        wait = self.auth_limiter.blocked_for(address)
        if wait:
            raise HTTPError(429, "Too many failed authentication attempts", "not_authenticated",
                            {"retry-after": str(wait)})  # fmt: skip
        th = _token_hash(scope)
        if th is None:
            raise HTTPError(
                403,
                "Missing bearer token: send `Authorization: Bearer <token>`",
                "not_authenticated",
            )
        caller = await self.registry.caller(th)
        if caller is None:
            self.auth_limiter.failed(address)
            raise HTTPError(403, "Invalid token", "not_authenticated")
        role = caller.roles.get(project_id)
        verdict = authz.decide(authz.PROXY_SERVICE, authz.Caller(caller.admin, role))
        if verdict is not authz.Verdict.ALLOW:
            raise HTTPError(403, "The token's user is not a member of the project", "forbidden")

    # -- /proxy/services --------------------------------------------------------------------

    async def _service(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        parts = scope["path"][len(SERVICES) :].split("/", 2)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise HTTPError(404, "Use /proxy/services/<project>/<run>/", "resource_not_exists")
        project, run = parts[0], parts[1]
        prefix = f"{SERVICES}{project}/{run}"
        if len(parts) == 2:
            if scope["type"] == "websocket":
                raise HTTPError(404, "Add a trailing slash", "resource_not_exists")
            qs = scope.get("query_string", b"").decode("latin-1")
            location = prefix + "/" + (f"?{qs}" if qs else "")
            await _send_json(send, 308, {"detail": "moved"}, {"location": location})
            return
        svc = await self.registry.service(project, run)
        if svc is None or not svc.active:
            raise HTTPError(
                404, f"Service {run} not found in project {project}", "resource_not_exists"
            )
        if svc.auth:
            await self._authorize(scope, svc.project_id)
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw[len(prefix) :].decode("latin-1") if svc.strip_prefix else raw.decode("latin-1")
        # "forwarded": a replica answered (with whatever status); else the proxy's own error.
        started, outcome = time.monotonic(), "forwarded"
        try:
            await self._check_rate(scope, svc, path)
            await self._dispatch(scope, receive, send, svc, path, prefix)
        except HTTPError as e:
            outcome = str(e.status)
            raise
        except BaseException:
            outcome = "500"
            raise
        finally:
            self.on_request(project, run, outcome, time.monotonic() - started)

    async def _check_rate(self, scope: dict[str, Any], svc: Service, path: str) -> None:
        if not svc.rate_limits:
            return
        rule = self.limiter.rule_for(svc.rate_limits, path)
        if rule is None:
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.limiter.key_of(rule, (scope.get("client") or ("",))[0], headers)
        if not self.limiter.allow(svc.run_id, rule, key):
            raise HTTPError(
                429,
                f"Rate limit of service {svc.run_name} exceeded",
                "rate_limited",
                {"retry-after": "1"},
            )

    async def _dispatch(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        svc: Service,
        path: str,
        prefix: str,
        body: RequestBody | None = None,
    ) -> None:
        client_ip = (scope.get("client") or ("",))[0]
        keep_auth = (not svc.auth) or _header(scope, b"x-dstack-forward-authorization") in (
            "1",
            "true",
            "yes",
        )
        headers = upstream_headers(scope, not keep_auth, prefix, client_ip)
        qs = scope.get("query_string", b"").decode("latin-1")
        target = path + (f"?{qs}" if qs else "")
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            replica = await self._pick(svc)
            self.stats.hit(svc.run_id)
            ok = await forward_websocket(
                scope, receive, send, f"ws://{replica.host}:{replica.port}{target}", headers
            )
            if not ok:
                await self._mark_unhealthy(svc, replica)
                raise HTTPError(
                    502, f"Replica of {svc.run_name} refused the WebSocket", "bad_gateway"
                )
            return
        if body is None:
            length = _header(scope, b"content-length")
            if length and length.isdigit():
                size: int | None = int(length)
            else:  # HTTP/1.1: no length and no chunked encoding means no body
                size = None if _header(scope, b"transfer-encoding") else 0
            body = RequestBody(receive, size, self.config.max_body)
            try:
                await body.prepare()
            except BodyTooLarge as e:
                raise HTTPError(
                    413,
                    f"Request body is larger than {self.config.max_body} bytes",
                    "request_too_large",
                ) from e
        self.stats.hit(svc.run_id)
        deadline = asyncio.get_running_loop().time() + self.config.hold_seconds
        while True:
            replica = await self._pick(svc)
            self.outstanding[replica.job_id] += 1
            try:
                await forward_http(
                    self.pool,
                    scope,
                    send,
                    body,
                    (replica.host, replica.port),
                    target,
                    headers,
                    self.config.read_timeout,
                )
                return
            except ClientGone:
                return
            except BodyTooLarge as e:
                raise HTTPError(
                    413,
                    f"Request body is larger than {self.config.max_body} bytes",
                    "request_too_large",
                ) from e
            except UpstreamTimeout as e:
                raise HTTPError(
                    504,
                    f"Service {svc.run_name} did not answer within {self.config.read_timeout:g}s",
                    "gateway_timeout",
                ) from e
            except UpstreamFailed as e:
                late = asyncio.get_running_loop().time() > deadline
                if e.sent or not body.replayable or late:
                    await self._mark_unhealthy(svc, replica, e)
                    raise HTTPError(
                        502,
                        f"Replica {replica.replica_num} of {svc.run_name} failed: {e}",
                        "bad_gateway",
                    ) from e
                # Refused before anything was sent: the app is not listening (yet, or any
                # more). Prefer other replicas for a moment and try again.
                self._refused[replica.job_id] = asyncio.get_running_loop().time() + 1.0
                await asyncio.sleep(0.05)
                svc = await self.registry.service(svc.project_name, svc.run_name) or svc
            finally:
                self.outstanding[replica.job_id] -= 1
                if self.outstanding[replica.job_id] <= 0:
                    self.outstanding.pop(replica.job_id, None)

    def _usable(self, svc: Service) -> list[Replica]:
        now = asyncio.get_running_loop().time()
        return [r for r in svc.replicas if self._refused.get(r.job_id, 0.0) <= now]

    async def _pick(self, svc: Service) -> Replica:
        """Least outstanding requests among ready replicas; with none, wait for one."""
        candidates = self._usable(svc)
        if not candidates:
            candidates = await self._hold(svc)
        least = min(self.outstanding.get(r.job_id, 0) for r in candidates)
        return random.choice([r for r in candidates if self.outstanding.get(r.job_id, 0) == least])

    async def _hold(self, svc: Service) -> list[Replica]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.hold_seconds
        self.stats.waiting(svc.run_id)
        self._flush_now.set()
        next_nudge = loop.time() + 5.0
        while loop.time() < deadline:
            await asyncio.sleep(0.2)
            fresh = await self.registry.service(svc.project_name, svc.run_name)
            if fresh is None or not fresh.active:
                break
            ready = self._usable(fresh)
            if ready:
                return ready
            if loop.time() >= next_nudge:  # keep asking while we wait
                self.stats.waiting(svc.run_id)
                self._flush_now.set()
                next_nudge = loop.time() + 5.0
        raise HTTPError(
            503,
            f"Service {svc.run_name} has no ready replica: waited "
            f"{self.config.hold_seconds:g}s for one to start; try again later",
            "no_replicas",
            {"retry-after": "5"},
        )

    async def _mark_unhealthy(self, svc: Service, replica: Replica, why: object = "") -> None:
        log.warning(
            "replica %s of %s failed (%s); out of rotation", replica.replica_num, svc.run_name, why
        )
        svc.replicas = [r for r in svc.replicas if r.job_id != replica.job_id]
        async with self.db.session() as s:
            await s.execute(
                update(t.Job).where(t.Job.id == replica.job_id).values(unhealthy_at=utcnow())
            )
            job = await s.get(t.Job, replica.job_id)
            if job is not None:
                replica_event(s, job, f"Replica out of rotation: {why or 'request failed'}")
            await s.commit()
        self.registry.forget(svc.project_name, svc.run_name)

    # -- /proxy/models ----------------------------------------------------------------------

    async def _models(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Authorize against the project, then answer the listing or forward to the service
        that `openai.resolve` picks for the body's model."""
        if scope["type"] != "http":
            raise HTTPError(
                404, "WebSockets are not served under /proxy/models", "resource_not_exists"
            )
        project, endpoint = openai.split_path(scope["path"][len(MODELS) :])
        project_id = await openai.project_id(self.db, project) if project else None
        if project_id is None:
            raise HTTPError(404, f"Project {project} not found", "resource_not_exists")
        await self._authorize(scope, project_id)
        models = await self.registry.models(project)
        endpoint = openai.endpoint_for(endpoint, scope["method"])
        if endpoint == openai.LIST:
            await _send_json(send, 200, openai.model_list(project, models))
            return
        body = RequestBody(receive, None, self.config.max_body)
        try:
            data = b"".join([c async for c in body.content()])  # type: ignore[union-attr]
        except BodyTooLarge as e:
            raise HTTPError(
                413,
                f"Request body is larger than {self.config.max_body} bytes",
                "request_too_large",
            ) from e
        svc, path = await openai.resolve(self.registry, project, models, data, endpoint)
        replay = RequestBody(receive, len(data), self.config.max_body)
        replay.data = data  # read whole to find the model; forwarded (and retried) from memory
        await self._dispatch(scope, receive, send, svc, path, MODELS + project, replay)
