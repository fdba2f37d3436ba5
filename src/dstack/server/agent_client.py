"""Async HTTP client of the host agent. The protocol (paths, headers, fields, the error shape)
is `dstack.agent.protocol`, shared with the agent; docs/agent.md describes it.

One client per agent keeps its connections alive: the apply-to-running path is latency bound,
and watching many hosts must cost one small request each. An agent reached straight over TCP
(loopback) is spoken to with `agent_http.LoopbackHttp`, a fraction of httpx's CPU per request;
one behind a backend's transport (an SSH tunnel) through `httpx.AsyncClient`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

import httpx

from dstack.agent import protocol as p
from dstack.agent.protocol import FINISHED, JobState
from dstack.server.agent_http import LoopbackError, LoopbackHttp

__all__ = [
    "FINISHED",
    "AgentClient",
    "AgentClientError",
    "AgentError",
    "AgentUnreachableError",
    "JobState",
]

DEFAULT_TIMEOUT = 9.0
UPLOAD_TIMEOUT = 60.0


def _remember_sniffio_absent() -> None:
    """httpcore runs `import sniffio` on every request (to learn which async library runs it)
    and falls back to asyncio when that fails. Without the package installed, each failed
    import searched the whole `sys.path` again: about 8% of the server's CPU while it ran
    many small jobs. Recording the absence once in `sys.modules` makes every later import
    fail at once, as it would anyway; an installed sniffio is left alone."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


_remember_sniffio_absent()


class AgentClientError(Exception):
    """Base of the errors raised by AgentClient."""


class AgentError(AgentClientError):
    """The agent answered with an HTTP error; `status_code` tells which."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class AgentUnreachableError(AgentClientError):
    """The agent could not be reached (connection refused, reset, timeout)."""


class AgentClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport`: how bytes reach the agent (SSH hosts: through the host's tunnel)."""
        self.base_url = base_url.rstrip("/")
        headers = {p.AUTHORIZATION: f"{p.BEARER} {token}"}
        self._direct = (
            LoopbackHttp.for_url(self.base_url, headers, timeout) if transport is None else None
        )
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._direct is not None:
            await self._direct.aclose()
        await self._client.aclose()

    async def _call(self, route: p.Route, job_id: str | None = None, **kwargs: Any) -> Any:
        if self._direct is not None:
            return await self._call_direct(route, job_id, **kwargs)
        try:
            response = await self._client.request(route.method, route.path(job_id), **kwargs)
        except httpx.TimeoutException as e:
            raise AgentUnreachableError(f"agent at {self.base_url} timed out: {e!r}") from e
        except httpx.TransportError as e:
            raise AgentUnreachableError(f"agent at {self.base_url} unreachable: {e!r}") from e
        if response.status_code >= 400:
            raise AgentError(_error_message(response), response.status_code)
        try:
            return response.json()
        except ValueError as e:
            raise AgentError(f"agent sent invalid JSON: {e}", response.status_code) from e

    async def _call_direct(self, route: p.Route, job_id: str | None, **kwargs: Any) -> Any:
        assert self._direct is not None
        try:
            status, body = await self._direct.request(route.method, route.path(job_id), **kwargs)
        except LoopbackError as e:
            what = "timed out" if e.timed_out else "unreachable"
            raise AgentUnreachableError(f"agent at {self.base_url} {what}: {e}") from e
        try:
            payload = json.loads(body)
        except ValueError as e:
            if status >= 400:
                raise AgentError(f"HTTP {status}: {body[:200]!r}", status) from e
            raise AgentError(f"agent sent invalid JSON: {e}", status) from e
        if status >= 400:
            message = p.error_message(payload) or f"HTTP {status}: {body[:200]!r}"
            raise AgentError(message, status)
        return payload

    async def healthcheck(self) -> dict[str, Any]:
        return await self._call(p.HEALTHCHECK)

    async def host_info(self) -> dict[str, Any]:
        return await self._call(p.HOST_INFO)

    async def start_job(self, spec: dict[str, Any], code: bytes) -> JobState:
        """Create and run the job with its code, in one request. Idempotent by the spec's
        `id`: sent again, it answers the job's current state and never starts it twice; a
        different spec or code under that id is refused (AgentError, 409)."""
        headers, body = p.encode_start(spec, code)
        return await self._call(
            p.START_JOB, spec["id"], content=body, headers=headers, timeout=UPLOAD_TIMEOUT
        )

    async def list_jobs(self) -> list[JobState]:
        """Every job on the host in one call; a job missing from it is unknown to the agent."""
        body = await self._call(p.LIST_JOBS)
        try:
            return p.jobs_of(body)
        except ValueError as e:
            raise AgentError(f"agent sent an invalid job list: {e}", 200) from e

    async def list_jobs_with_metrics(
        self, metrics_after: float
    ) -> tuple[list[JobState], dict[str, list[dict[str, Any]]]]:
        """The job list and, by job id, the resource samples taken after `metrics_after`
        (seconds since the epoch): one call for both, as the server polls the list anyway."""
        body = await self._call(p.LIST_JOBS, params={p.METRICS_AFTER: metrics_after})
        try:
            return p.jobs_of(body), p.metrics_of(body)
        except ValueError as e:
            raise AgentError(f"agent sent an invalid job list: {e}", 200) from e

    async def wait_jobs(
        self, changed_after: str | None, wait: float
    ) -> tuple[list[JobState], str | None]:
        """The job list once the host's change cursor differs from `changed_after` (a job
        started, exited, wrote output...), or after `wait` seconds; and the new cursor (None
        from an agent that has no long poll: it answered at once)."""
        params: dict[str, Any] = {p.WAIT: wait}
        if changed_after is not None:
            params[p.CHANGED_AFTER] = changed_after
        body = await self._call(p.LIST_JOBS, params=params, timeout=wait + DEFAULT_TIMEOUT)
        try:
            return p.jobs_of(body), p.changes_of(body)
        except ValueError as e:
            raise AgentError(f"agent sent an invalid job list: {e}", 200) from e

    async def get_job(self, job_id: str) -> JobState:
        return await self._call(p.GET_JOB, job_id)

    async def poll_logs(
        self, job_id: str, offset: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        params: dict[str, int] = {p.OFFSET: offset}
        if limit is not None:
            params[p.LIMIT] = limit
        return await self._call(p.JOB_LOGS, job_id, params=params)

    async def stop_job(
        self,
        job_id: str,
        abort: bool = False,
        reason: str | None = None,
        message: str | None = None,
    ) -> JobState:
        body: dict[str, Any] = {p.ABORT: abort, p.REASON: reason}
        if message is not None:
            body[p.MESSAGE] = message
        return await self._call(p.STOP_JOB, job_id, json=body)

    async def remove_job(self, job_id: str) -> dict[str, Any]:
        return await self._call(p.REMOVE_JOB, job_id)

    async def delete_volume_dir(self, volume_id: str) -> dict[str, Any]:
        """Remove a directory volume's data on the host: `{volume_id, deleted}` (`deleted`
        False: there was none). AgentError 409 while an unfinished job mounts it."""
        return await self._call(p.DELETE_VOLUME_DIR, volume_id, json={})


def _error_message(response: httpx.Response) -> str:
    try:
        message = p.error_message(response.json())
    except ValueError:
        message = None
    if message is not None:
        return message
    return f"HTTP {response.status_code}: {response.text[:200]}"
