"""Hostile request bodies against a real server, sent over raw sockets so that nothing in a
client library smooths them: an announced 1 GB body, 300 MB with no token, an endless chunked
body, a 3 MB name, a 200 MB multipart upload. Each is answered at once with 403/413/422, the
server's memory stays bounded, and the connection is not held open."""

from __future__ import annotations

import json
import socket
import time

import httpx

from e2e.harness import Server

from .conftest import rss_bytes, task_spec

APPLY = "/api/project/main/runs/apply"
UPLOAD = "/api/project/main/repos/upload_code"
MB = 1024 * 1024
# What a bounded server may grow by while refusing every body below (the API cap is 8 MiB).
RSS_SLACK = 64 * MB


def _connect(srv: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    sock.settimeout(10)
    return sock


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


MULTIPART_HEAD = (
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="code.tar.gz"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


def _send_until_refused(
    sock: socket.socket, total: int, chunked: bool, prefix: bytes = b""
) -> None:
    """Stream up to `total` bytes; stop when the server has answered and closed."""
    block = b"x" * MB
    sent = 0
    try:
        if prefix:
            sock.sendall(b"%x\r\n%s\r\n" % (len(prefix), prefix) if chunked else prefix)
        while sent < total:
            data = block if not chunked else b"%x\r\n%s\r\n" % (len(block), block)
            sock.sendall(data)
            sent += len(block)
    except OSError:
        return  # the server answered and closed: exactly what we want


def _auth(srv: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {srv.token}"}


def test_an_announced_huge_body_is_refused_before_it_is_sent(sqlite_server: Server) -> None:
    srv = sqlite_server
    for headers in ({}, _auth(srv)):
        sock = _connect(srv)
        started = time.monotonic()
        sock.sendall(
            _head(
                APPLY,
                {**headers, "Content-Type": "application/json", "Content-Length": str(1024 * MB)},
            )
        )
        status, body = _read_answer(sock)
        assert time.monotonic() - started < 5
        assert status == 413, body
        assert b"too large" in body
        # The server closes the connection: it does not wait for the gigabyte.
        assert sock.recv(1) == b""
        sock.close()


def test_a_large_body_without_a_token_is_refused_from_the_headers(sqlite_server: Server) -> None:
    srv = sqlite_server
    before = rss_bytes(srv.proc.pid)
    for path, ctype in ((APPLY, "application/json"), (UPLOAD, "multipart/form-data; boundary=b")):
        sock = _connect(srv)
        sock.sendall(_head(path, {"Content-Type": ctype, "Transfer-Encoding": "chunked"}))
        _send_until_refused(sock, 300 * MB, chunked=True)
        status, body = _read_answer(sock)
        assert status == 403, body
        assert b"bearer token" in body
        sock.close()
    assert rss_bytes(srv.proc.pid) - before < RSS_SLACK


def test_a_chunked_body_is_cut_at_the_limit(sqlite_server: Server) -> None:
    srv = sqlite_server
    before = rss_bytes(srv.proc.pid)
    for path, ctype in ((APPLY, "application/json"), (UPLOAD, "multipart/form-data; boundary=b")):
        sock = _connect(srv)
        sock.sendall(
            _head(path, {**_auth(srv), "Content-Type": ctype, "Transfer-Encoding": "chunked"})
        )
        prefix = MULTIPART_HEAD if path == UPLOAD else b""
        _send_until_refused(sock, 300 * MB, chunked=True, prefix=prefix)
        status, body = _read_answer(sock)
        assert status == 413, body
        assert b"limit" in body
        sock.close()
    assert rss_bytes(srv.proc.pid) - before < RSS_SLACK
    assert srv.api("/api/runs/list", {}).status_code == 200  # still serving


def test_a_huge_value_is_never_echoed(sqlite_server: Server) -> None:
    srv = sqlite_server
    name = "n" * (3 * MB)  # twice in the spec: under the 8 MiB cap, so the name check answers
    body = {"plan": {"run_spec": task_spec(name)}}
    r = httpx.post(f"{srv.url}{APPLY}", json=body, headers=_auth(srv), timeout=30)
    assert r.status_code in (400, 422), r.text[:300]
    assert len(r.content) < 2000 and "Invalid run name" in r.text
    # A validation error (wrong type, huge value) is summarised, never echoed either.
    r = httpx.post(
        f"{srv.url}{APPLY}",
        json={"plan": {"run_spec": {"configuration": "c" * MB}}},
        headers=_auth(srv),
        timeout=30,
    )
    assert r.status_code == 422 and len(r.content) < 4000, (r.status_code, len(r.content))
    assert "ccccc" not in r.text


def test_an_upload_over_the_limit_is_refused_and_a_normal_one_works(sqlite_server: Server) -> None:
    srv = sqlite_server
    before = rss_bytes(srv.proc.pid)
    big = b"z" * (200 * MB)
    # Announced size over the limit: refused before a byte of the archive is read.
    sock = _connect(srv)
    sock.sendall(
        _head(
            UPLOAD,
            {
                **_auth(srv),
                "Content-Type": "multipart/form-data; boundary=b",
                "Content-Length": str(len(big)),
            },
        )
    )
    status, body = _read_answer(sock)
    assert status == 413, body
    sock.close()
    r = httpx.post(
        f"{srv.url}{UPLOAD}",
        files={"file": ("code.tar.gz", b"x" * 1000)},
        headers=_auth(srv),
        timeout=30,
    )
    assert r.status_code == 200 and len(r.json()["hash"]) == 64, r.text
    # Without a token: 403, not 413 and not after spooling.
    r = httpx.post(f"{srv.url}{UPLOAD}", files={"file": ("code.tar.gz", b"x" * 1000)}, timeout=30)
    assert r.status_code == 403
    assert rss_bytes(srv.proc.pid) - before < RSS_SLACK
    assert json.loads(srv.api("/api/server/get_info", {}).text)["server_version"]
