"""Async HTTP client of the host agent (see docs/agent.md for the protocol).

One `httpx.AsyncClient` per agent keeps its connection alive: starting a job is
several small calls, and the whole apply-to-running path is latency bound.
"""

from __future__ import annotations

from typing import Any

import httpx

DEFAULT_TIMEOUT = 9.0
UPLOAD_TIMEOUT = 60.0


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
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._client.request(method, path, **kwargs)
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

    async def healthcheck(self) -> dict[str, Any]:
        return await self._request("GET", "/api/healthcheck")

    async def host_info(self) -> dict[str, Any]:
        return await self._request("GET", "/api/host_info")

    async def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", "/api/jobs", json=spec)

    async def upload_code(self, job_id: str, data: bytes) -> dict[str, Any]:
        return await self._request(
            "PUT",
            f"/api/jobs/{job_id}/code",
            content=data,
            headers={"Content-Type": "application/gzip"},
            timeout=UPLOAD_TIMEOUT,
        )

    async def run_job(self, job_id: str) -> dict[str, Any]:
        return await self._request("POST", f"/api/jobs/{job_id}/run")

    async def list_jobs(self) -> dict[str, Any]:
        """Every job on the host in one call: {"jobs": [state, ...]}."""
        return await self._request("GET", "/api/jobs")

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/api/jobs/{job_id}")

    async def poll_logs(
        self, job_id: str, offset: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        params: dict[str, int] = {"offset": offset}
        if limit is not None:
            params["limit"] = limit
        return await self._request("GET", f"/api/jobs/{job_id}/logs", params=params)

    async def stop_job(
        self,
        job_id: str,
        abort: bool = False,
        reason: str | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"abort": abort, "reason": reason}
        if message is not None:
            body["message"] = message
        return await self._request("POST", f"/api/jobs/{job_id}/stop", json=body)

    async def remove_job(self, job_id: str) -> dict[str, Any]:
        return await self._request("POST", f"/api/jobs/{job_id}/remove")


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return f"HTTP {response.status_code}: {response.text[:200]}"
