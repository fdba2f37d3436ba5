"""The agent's HTTP API: JSON over loopback, bearer-token authenticated.

Every failure becomes a JSON `{"error": ...}` with a 4xx/5xx code; a traceback only
ever goes to the agent's own log.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dstack.agent import __version__
from dstack.agent.hostinfo import HostInfoCache
from dstack.agent.jobs import Conflict, JobStore, NotFound
from dstack.agent.logs import DEFAULT_LIMIT, MAX_LIMIT, BadOffset
from dstack.agent.spec import BadRequest
from dstack.agent.tarsafe import UnsafeArchive

log = logging.getLogger("dstack.agent")

MAX_JSON_BODY = 16 * 1024 * 1024
MAX_CODE_BODY = 4 * 1024 * 1024 * 1024
IDLE_CONNECTION_TIMEOUT = 120


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], home: Path, token_sha256: str) -> None:
        super().__init__(address, Handler)
        self.home = home
        self.token_sha256 = token_sha256
        self.jobs = JobStore(home)
        self.host_info = HostInfoCache(home)


Route = Callable[["Handler", "re.Match[str]"], Any]
ROUTES: list[tuple[str, re.Pattern[str], str]] = []


def route(method: str, pattern: str) -> Callable[[Route], Route]:
    def register(fn: Route) -> Route:
        ROUTES.append((method, re.compile(f"^{pattern}$"), fn.__name__))
        return fn

    return register


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the server reuses connections
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "dstack-agent"
    timeout = IDLE_CONNECTION_TIMEOUT
    server: AgentHTTPServer

    # --- plumbing ------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, unknown method) answer JSON too."""
        self.close_connection = True
        self._body_read = True
        self._error(code, message or HTTPStatus(code).phrase)

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        try:
            url = urlsplit(self.path)
            self.query = parse_qs(url.query)
            fn, match = self._find_route(method, url.path)
            if fn.__name__ != "healthcheck":
                self._authenticate()
            result = fn(self, match)
            self._send(200, result)
        except HttpError as e:
            self._error(e.status, str(e))
        except BadRequest as e:
            self._error(400, str(e))
        except UnsafeArchive as e:
            self._error(400, f"code: {e}")
        except BadOffset as e:
            self._error(400, f"offset: {e}")
        except NotFound as e:
            self._error(404, str(e))
        except Conflict as e:
            self._error(409, str(e))
        except Exception:
            log.exception("error handling %s %s", method, self.path)
            self._error(500, "internal agent error; see agent.log")

    def _find_route(self, method: str, path: str) -> tuple[Route, re.Match[str]]:
        path_matched = False
        for route_method, pattern, name in ROUTES:
            match = pattern.match(path)
            if match:
                path_matched = True
                if route_method == method:
                    return getattr(Handler, name), match
        if path_matched:
            raise HttpError(405, f"method {method} not allowed on {path}")
        raise HttpError(404, f"no such endpoint: {path}")

    def _authenticate(self) -> None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError(401, "missing bearer token")
        given = token_hash(token.strip())
        if not hmac.compare_digest(given, self.server.token_sha256):
            raise HttpError(401, "invalid token")

    def _length(self, maximum: int) -> int:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise HttpError(411, "chunked request bodies are not supported; send Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "Content-Length: not an integer") from None
        if length < 0:
            raise HttpError(400, "Content-Length: negative")
        if length > maximum:
            raise HttpError(413, f"body: larger than {maximum} bytes")
        return length

    def _json_body(self) -> Any:
        length = self._length(MAX_JSON_BODY)
        raw = self.rfile.read(length) if length else b""
        self._body_read = True
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as e:
            raise HttpError(400, f"body: invalid JSON ({e})") from None

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        if not self._body_read and getattr(self, "command", None) in ("POST", "PUT", "PATCH"):
            # An unread request body would corrupt the next request on this connection.
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        with contextlib.suppress(OSError):
            self._send(status, {"error": message})

    def _query_int(self, name: str, default: int) -> int:
        values = self.query.get(name)
        if not values:
            return default
        try:
            return int(values[-1])
        except ValueError:
            raise HttpError(400, f"{name}: must be an integer") from None

    # --- endpoints -----------------------------------------------------------------
    @route("GET", "/api/healthcheck")
    def healthcheck(self, _m: re.Match[str]) -> Any:
        return {"service": "dstack-agent", "version": __version__}

    @route("GET", "/api/host_info")
    def host_info(self, _m: re.Match[str]) -> Any:
        return self.server.host_info.get()

    @route("GET", "/api/jobs")
    def list_jobs(self, _m: re.Match[str]) -> Any:
        return {"jobs": self.server.jobs.list()}

    @route("POST", "/api/jobs")
    def submit_job(self, _m: re.Match[str]) -> Any:
        return self.server.jobs.submit(self._json_body())

    @route("GET", "/api/jobs/(?P<id>[^/]+)")
    def get_job(self, m: re.Match[str]) -> Any:
        return self.server.jobs.state(m["id"])

    @route("PUT", "/api/jobs/(?P<id>[^/]+)/code")
    def upload_code(self, m: re.Match[str]) -> Any:
        length = self._length(MAX_CODE_BODY)
        self._body_read = True  # the store reads (or drains) exactly `length` bytes
        return self.server.jobs.upload_code(m["id"], self.rfile, length)

    @route("POST", "/api/jobs/(?P<id>[^/]+)/run")
    def run_job(self, m: re.Match[str]) -> Any:
        self._json_body()
        return self.server.jobs.run(m["id"])

    @route("GET", "/api/jobs/(?P<id>[^/]+)/logs")
    def job_logs(self, m: re.Match[str]) -> Any:
        offset = self._query_int("offset", 0)
        limit = self._query_int("limit", DEFAULT_LIMIT)
        if offset < 0:
            raise HttpError(400, "offset: must be >= 0")
        if not 0 < limit <= MAX_LIMIT:
            raise HttpError(400, f"limit: must be between 1 and {MAX_LIMIT}")
        return self.server.jobs.logs(m["id"], offset, limit)

    @route("POST", "/api/jobs/(?P<id>[^/]+)/stop")
    def stop_job(self, m: re.Match[str]) -> Any:
        body = self._json_body()
        if not isinstance(body, dict):
            raise BadRequest("body: must be a JSON object")
        abort = body.get("abort", False)
        reason = body.get("reason")
        message = body.get("message")
        if not isinstance(abort, bool):
            raise BadRequest("abort: must be a boolean")
        if reason is not None and (not isinstance(reason, str) or not reason or len(reason) > 100):
            raise BadRequest("reason: must be a non-empty string (at most 100 chars) or null")
        if message is not None and not isinstance(message, str):
            raise BadRequest("message: must be a string or null")
        return self.server.jobs.stop(m["id"], abort, reason, message)

    @route("POST", "/api/jobs/(?P<id>[^/]+)/remove")
    def remove_job(self, m: re.Match[str]) -> Any:
        self._json_body()
        return self.server.jobs.remove(m["id"])
