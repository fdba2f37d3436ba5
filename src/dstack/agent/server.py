"""The agent's HTTP API: JSON over loopback, bearer-token authenticated. Paths, headers,
limits and shapes come from `protocol.py`, which the server's client shares.

Every failure becomes the protocol's error body with a 4xx/5xx code; a traceback only
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

from dstack.agent import __version__, metrics, notify, relay
from dstack.agent import protocol as p
from dstack.agent.diskspace import is_disk_full, no_space_message
from dstack.agent.hostinfo import HostInfoCache, run_tool
from dstack.agent.jobs import Conflict, JobStore, NotFound
from dstack.agent.logs import BadOffset
from dstack.agent.spec import BadRequest
from dstack.agent.tarsafe import UnsafeArchive

log = logging.getLogger("dstack.agent")

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
        self.metrics = metrics.Sampler(
            lambda: metrics.running_jobs(self.jobs.root, self.jobs.list()),
            metrics.gpu_reader(run_tool),
        )
        self.metrics.start()
        # Supervisors' notes that a job changed wake the long-polled job list.
        self.notes = notify.Listener(home, self.jobs.changes.bump)

    def server_close(self) -> None:
        self.notes.close()
        self.jobs.close()
        super().server_close()


Endpoint = Callable[["Handler", "re.Match[str]"], Any]
# The handler of each protocol route, by the route (filled in by @serves).
ENDPOINTS: dict[p.Route, str] = {}


def serves(route: p.Route) -> Callable[[Endpoint], Endpoint]:
    def register(fn: Endpoint) -> Endpoint:
        ENDPOINTS[route] = fn.__name__
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

    def do_CONNECT(self) -> None:
        """A byte stream to a port on this host's loopback (`relay.py` says why)."""
        self._body_read = True
        self.close_connection = True
        try:
            self._authenticate()
            target = relay.open_target(relay.target_of(self.path))
        except HttpError as e:
            self._error(e.status, str(e))
            return
        except relay.RelayError as e:
            self._error(e.status, str(e))
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        relay.relay(self.connection, target)

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
            route, fn, match = self._find_route(method, url.path)
            if route not in p.UNAUTHENTICATED:
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
        except OSError as e:
            if not is_disk_full(e):
                log.exception("error handling %s %s", method, self.path)
                self._error(500, "internal agent error; see agent.log")
                return
            log.warning("%s %s: %s", method, self.path, e)
            self._error(507, no_space_message(self.server.jobs.root))
        except Exception:
            log.exception("error handling %s %s", method, self.path)
            self._error(500, "internal agent error; see agent.log")

    def _find_route(self, method: str, path: str) -> tuple[p.Route, Endpoint, re.Match[str]]:
        path_matched = False
        for route in p.ROUTES:
            match = route.match(path)
            if match:
                path_matched = True
                if route.method == method:
                    return route, getattr(Handler, ENDPOINTS[route]), match
        if path_matched:
            raise HttpError(405, f"method {method} not allowed on {path}")
        raise HttpError(404, f"no such endpoint: {path}")

    def _authenticate(self) -> None:
        scheme, _, token = self.headers.get(p.AUTHORIZATION, "").partition(" ")
        if scheme.lower() != p.BEARER.lower() or not token.strip():
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
        length = self._length(p.MAX_JSON_BODY)
        raw = self.rfile.read(length) if length else b""
        self._body_read = True
        return _parse_json(raw, "body")

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        if not self._body_read and getattr(self, "command", None) in ("POST", "PUT", "PATCH"):
            # An unread request body would corrupt the next request on this connection.
            self.close_connection = True
        self.send_response(status)
        self.send_header(p.CONTENT_TYPE, p.JSON_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        with contextlib.suppress(OSError):
            self._send(status, p.error_body(message))

    def _query_int(self, name: str, default: int) -> int:
        values = self.query.get(name)
        if not values:
            return default
        try:
            return int(values[-1])
        except ValueError:
            raise HttpError(400, f"{name}: must be an integer") from None

    # --- endpoints -----------------------------------------------------------------
    @serves(p.HEALTHCHECK)
    def healthcheck(self, _m: re.Match[str]) -> Any:
        return {"service": p.SERVICE_NAME, "version": __version__}

    @serves(p.HOST_INFO)
    def host_info(self, _m: re.Match[str]) -> Any:
        return self.server.host_info.get()

    @serves(p.LIST_JOBS)
    def list_jobs(self, _m: re.Match[str]) -> Any:
        wait = self._query_float(p.WAIT, 0.0)
        if not 0 <= wait <= p.MAX_WAIT:
            raise HttpError(400, f"{p.WAIT}: must be between 0 and {p.MAX_WAIT:g} seconds")
        after = self.query.get(p.CHANGED_AFTER, [None])[-1]
        metrics_after = self._query_float(p.METRICS_AFTER, None)
        # The cursor first: a change while the jobs are read moves it past this answer's.
        changes = self.server.jobs.changes.wait(after, wait if after is not None else 0.0)
        samples = None if metrics_after is None else self.server.metrics.since(metrics_after)
        return p.jobs_body(self.server.jobs.list(), samples, changes)

    def _query_float(self, name: str, default: float | None) -> Any:
        if not self.query.get(name):
            return default
        try:
            return float(self.query[name][-1])
        except ValueError:
            raise HttpError(400, f"{name}: must be a number") from None

    @serves(p.START_JOB)
    def start_job(self, m: re.Match[str]) -> Any:
        total = self._length(p.MAX_JSON_BODY + p.MAX_CODE_BODY)
        try:
            spec_length = p.spec_length(self.headers.get(p.SPEC_LENGTH), total)
        except ValueError as e:
            raise HttpError(400, str(e)) from None
        if total - spec_length > p.MAX_CODE_BODY:
            raise HttpError(413, f"code: larger than {p.MAX_CODE_BODY} bytes")
        spec = _parse_json(self.rfile.read(spec_length), "spec")
        if isinstance(spec, dict):
            spec.setdefault("id", m["id"])
            if spec["id"] != m["id"]:
                raise BadRequest(f"id: {spec['id']!r} is not the job of the path ({m['id']!r})")
        # On success the store has read the whole code part; on an error before that, the
        # unread rest makes _send close the connection.
        state = self.server.jobs.start(spec, self.rfile, total - spec_length)
        self._body_read = True
        return state

    @serves(p.GET_JOB)
    def get_job(self, m: re.Match[str]) -> Any:
        return self.server.jobs.state(m["id"])

    @serves(p.JOB_LOGS)
    def job_logs(self, m: re.Match[str]) -> Any:
        offset = self._query_int(p.OFFSET, 0)
        limit = self._query_int(p.LIMIT, p.LOGS_DEFAULT_LIMIT)
        if offset < 0:
            raise HttpError(400, f"{p.OFFSET}: must be >= 0")
        if not 0 < limit <= p.LOGS_MAX_LIMIT:
            raise HttpError(400, f"{p.LIMIT}: must be between 1 and {p.LOGS_MAX_LIMIT}")
        return self.server.jobs.logs(m["id"], offset, limit)

    @serves(p.STOP_JOB)
    def stop_job(self, m: re.Match[str]) -> Any:
        body = self._json_body()
        if not isinstance(body, dict):
            raise BadRequest("body: must be a JSON object")
        abort = body.get(p.ABORT, False)
        reason = body.get(p.REASON)
        message = body.get(p.MESSAGE)
        if not isinstance(abort, bool):
            raise BadRequest(f"{p.ABORT}: must be a boolean")
        if reason is not None and (not isinstance(reason, str) or not reason or len(reason) > 100):
            raise BadRequest(f"{p.REASON}: must be a non-empty string (at most 100 chars) or null")
        if message is not None and not isinstance(message, str):
            raise BadRequest(f"{p.MESSAGE}: must be a string or null")
        return self.server.jobs.stop(m["id"], abort, reason, message)

    @serves(p.REMOVE_JOB)
    def remove_job(self, m: re.Match[str]) -> Any:
        self._json_body()
        return self.server.jobs.remove(m["id"])

    @serves(p.DELETE_VOLUME_DIR)
    def delete_volume_dir(self, m: re.Match[str]) -> Any:
        self._json_body()
        return self.server.jobs.delete_volume_dir(m["id"])


def _parse_json(raw: bytes, what: str) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as e:
        raise HttpError(400, f"{what}: invalid JSON ({e})") from None


# Every route of the protocol has its handler: a route added there and not here fails at import.
_missing = [r for r in p.ROUTES if r not in ENDPOINTS]
if _missing:
    raise RuntimeError(f"agent routes without a handler: {_missing}")
