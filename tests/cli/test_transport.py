"""The client's two transports (api/transport.py): the plain socket one must answer exactly as
the httpx one does, and step aside whenever httpx has something to add."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from dstack.api.client import APIClient
from dstack.api.http_errors import error_from_response
from dstack.api.transport import (
    HttpxTransport,
    PlainHTTP,
    TransportFailed,
    _parse_reply,
    plain_target,
)
from dstack.errors import ClientError

ANSWERS = {
    "/ok": (200, {"runs": ["ü", 1]}),
    "/forbidden": (403, {"detail": "no"}),
    "/refused": (400, {"detail": [{"msg": "Run x not found", "code": "resource_not_exists"}]}),
    "/invalid": (422, {"detail": [{"loc": ["body", "limit"], "msg": "not an int"}]}),
    "/broken": (500, None),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802
        Handler.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        status, payload = ANSWERS.get(self.path, (404, {"detail": "Not Found"}))
        data = b"Internal Server Error" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if self.path == "/ok":  # one answer chunked, as a streaming server sends it
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (data[:5], data[5:]):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize("path", [*ANSWERS, "/missing"])
def test_plain_answers_as_httpx_does(server: str, path: str) -> None:
    headers = {"Authorization": "Bearer t"}
    plain = PlainHTTP(urlsplit(server), headers, 5).send("POST", path, {"a": "ü"})
    plain_body = Handler.bodies[-1]
    full = HttpxTransport(server, headers, 5)
    try:
        reference = full.send("POST", path, {"a": "ü"})
    finally:
        full.close()
    assert plain_body == Handler.bodies[-1]  # the same JSON encoding
    assert plain.status_code == reference.status_code
    assert plain.content == reference.content
    assert str(plain.url) == str(reference.url)
    if plain.status_code >= 400:
        assert str(error_from_response(plain)) == str(error_from_response(reference))
    else:
        assert plain.json() == {"runs": ["ü", 1]}


def test_a_base_path_is_kept(server: str) -> None:
    plain = PlainHTTP(urlsplit(server + "/prefix/"), {}, 5).send("POST", "/ok")
    assert plain.status_code == 404 and plain.url == f"{server}/prefix/ok"


@pytest.mark.parametrize(
    "url, env, plain",
    [
        ("http://127.0.0.1:3000", {}, True),
        ("http://dstack.internal/prefix", {}, True),
        ("https://sky.dstack.ai", {}, False),  # TLS: httpx, with its verification
        ("http://user:pw@host:3000", {}, False),  # credentials in the URL: httpx sends them
        ("http://host:3000", {"HTTP_PROXY": "http://proxy:8080"}, False),
        ("http://host:3000", {"all_proxy": "socks5://proxy:1080"}, False),
        ("http://host:3000", {"HTTPS_PROXY": "http://proxy:8080"}, True),  # not for http://
        ("http://host:notaport", {}, False),
    ],
)
def test_plain_only_where_httpx_would_add_nothing(monkeypatch, url, env, plain) -> None:  # noqa: ANN001
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "https_proxy",
                 "HTTPS_PROXY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert (plain_target(url) is not None) is plain


def test_incomplete_answers_are_transport_failures() -> None:
    with pytest.raises(TransportFailed):
        _parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "u")
    with pytest.raises(TransportFailed):
        _parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "u")
    with pytest.raises(TransportFailed):
        _parse_reply(b"", "u")


def _silent_server() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_no_answer_in_time_is_named() -> None:
    sock, url = _silent_server()
    with sock, APIClient(url, "t", "main", timeout=0.2) as api, pytest.raises(ClientError) as e:
        api.get_server_info()
    assert str(e.value) == f"Request to dstack server {url} timed out"


def test_a_dropped_connection_is_named() -> None:
    sock, url = _silent_server()

    def drop() -> None:
        conn, _ = sock.accept()
        conn.close()

    threading.Thread(target=drop, daemon=True).start()
    with sock, APIClient(url, "t", "main") as api, pytest.raises(ClientError) as e:
        api.get_server_info()
    assert str(e.value).startswith(f"Failed to talk to dstack server {url}: ")


def test_busy_server_is_asked_again() -> None:
    """503 + Retry-After (a busy database) is retried on the plain transport too."""
    answers = iter([(503, b'{"detail": "busy"}'), (200, b'{"ok": true}')])
    sock, url = _silent_server()

    def serve() -> None:
        for status, body in answers:
            conn, _ = sock.accept()
            conn.recv(65536)
            head = f"HTTP/1.1 {status} X\r\nRetry-After: 0\r\nContent-Length: {len(body)}\r\n\r\n"
            conn.sendall(head.encode() + body)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    start = time.monotonic()
    with sock, APIClient(url, "t", "main") as api:
        assert api.request("/api/server/get_info") == {"ok": True}
    assert time.monotonic() - start < 5


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "first, later, content",
    [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{"ok": 1}', b"", b'{"ok": 1}'),
        (CHUNKED + b'5\r\n{"ok"\r\n4\r\n: 1}\r\n0\r\n\r\n', b"", b'{"ok": 1}'),
        # chunk data that ends as the last chunk does; the rest comes a moment later
        (CHUNKED + b"5\r\n0\r\n\r\n", b"\r\n0\r\n\r\n", b"0\r\n\r\n"),
    ],
)
def test_a_complete_answer_is_taken_without_waiting_for_the_close(
    first: bytes, later: bytes, content: bytes
) -> None:
    """A server (or proxy) may keep the connection open despite `Connection: close`."""
    sock, url = _silent_server()
    done = threading.Event()

    def serve() -> None:
        conn, _ = sock.accept()
        conn.recv(65536)
        conn.sendall(first)
        if later:
            time.sleep(0.3)
            conn.sendall(later)
        done.wait(10)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    start = time.monotonic()
    try:
        reply = PlainHTTP(urlsplit(url), {}, 5).send("POST", "/x")
    finally:
        done.set()
        sock.close()
    assert time.monotonic() - start < 3
    assert reply.status_code == 200 and reply.content == content
