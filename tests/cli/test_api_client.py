"""The API client's error mapping (cli.md §1) against a real HTTP server on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dstack.api.client import APIClient, ServerError
from dstack.errors import ClientError
from dstack.version import __version__

RESPONSES = {
    "/api/project/main/runs/get": (400, {"detail": [{"msg": "Run x not found", "code": "resource_not_exists"}]}),  # noqa: E501
    "/api/users/get_my_user": (403, {"detail": [{"msg": "bad token", "code": "forbidden"}]}),
    "/api/project/main/runs/stop": (422, {"detail": [{"loc": ["body", "runs_names"], "msg": "field required", "type": "missing"}]}),  # noqa: E501
    "/api/project/main/repos/upload_code": (413, {"detail": [{"msg": "Code is over 2 MiB"}]}),
    "/api/project/main/runs/delete": (500, {"detail": "boom"}),
    "/api/project/main/fleets/apply": (404, {"detail": "Not Found"}),
    "/api/server/get_info": (200, {"server_version": "9.9"}),
}


class Handler(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = self.path.split("?")[0]
        Handler.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status, payload = RESPONSES.get(path, (404, {"detail": "Not Found"}))
        if path == "/api/project/main/fleets/apply":
            payload = {}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def api(server):
    with APIClient(server, "secret", "main", retry_delay=0.01) as client:
        yield client


def test_headers_and_success(api):
    assert api.get_server_info() == {"server_version": "9.9"}
    headers = Handler.seen[-1]["headers"]
    assert headers["Authorization"] == "Bearer secret"
    assert headers["X-API-VERSION"] == __version__


def test_400_gives_server_message(api):
    with pytest.raises(ServerError) as e:
        api.get_run("x")
    assert str(e.value) == "Run x not found"
    assert e.value.code == "resource_not_exists" and e.value.status_code == 400


def test_403(api, server):
    with pytest.raises(ClientError) as e:
        api.get_my_user()
    assert str(e.value) == (
        f"Access to {server}/api/users/get_my_user is denied. Please check your access token"
    )


def test_422(api):
    with pytest.raises(ClientError, match=r"^Server validation error: runs_names: field required"):
        api.stop_runs(["a"])


def test_413_gives_server_message(api):
    with pytest.raises(ClientError, match="^Code is over 2 MiB$"):
        api.upload_code(b"data")
    assert "repo_id=none" in Handler.seen[-1]["path"]


def test_500(api):
    with pytest.raises(ClientError, match="^Unexpected error: status code 500"):
        api.delete_runs(["a"])


def test_404_without_message(api, server):
    with pytest.raises(ClientError) as e:
        api.request("/api/nothing/here")
    assert str(e.value) == f"Status code 404 when requesting {server}/api/nothing/here"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_error_is_retried_then_named():
    url = f"http://127.0.0.1:{_closed_port()}"
    api = APIClient(url, "t", "main", retry_delay=0.05)
    start = time.monotonic()
    with pytest.raises(ClientError) as e:
        api.get_server_info()
    assert str(e.value) == f"Failed to connect to dstack server {url}"
    assert time.monotonic() - start >= 0.1  # three tries, two waits
