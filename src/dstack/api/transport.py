"""How the API client sends one request: a plain HTTP/1.1 exchange on a socket when it can,
httpx when it needs more (TLS, a proxy, credentials in the URL, uploads, query parameters).

Why two: `import httpx` costs ~0.13 s of CPU (it pulls in ssl, email, h11, httpcore), more
than half of what `dstack ps` may take in all (issue 16). A JSON POST to a plain `http://`
server needs none of it. Either way the answer is a `Reply`-like object and a failure is one
of the three errors below, so `APIClient.request` has one retry loop and one set of messages.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any
from urllib.parse import SplitResult, urlsplit

from dstack.version import __version__

# The environment variables httpx (trust_env) takes a proxy for an http:// URL from.
PROXY_VARIABLES = ("http_proxy", "all_proxy")


class ConnectFailed(Exception):
    """The server could not be reached: nothing was sent, so trying again is safe."""


class TimedOut(Exception):
    """The server was reached but did not answer in time."""


class TransportFailed(Exception):
    """The exchange broke off in another way (reset, garbled answer)."""


class Reply:
    """The parts of an HTTP answer the client and `http_errors` read (as on httpx.Response)."""

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes, url: str):
        self.status_code = status_code
        self.headers = headers  # lower-case names
        self.content = content
        self.url = url

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def plain_target(base_url: str) -> SplitResult | None:
    """`base_url` split, when a plain socket can talk to it exactly as httpx would."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or "@" in parts.netloc or parts.query or parts.fragment:
        return None
    if any(v for k, v in os.environ.items() if k.lower() in PROXY_VARIABLES):
        return None  # httpx applies the proxy and NO_PROXY's rules
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return None
    return parts if parts.hostname else None


class PlainHTTP:
    """One connection per request (`Connection: close`): the CLI mostly sends one or two."""

    def __init__(self, target: SplitResult, headers: dict[str, str], timeout: float) -> None:
        self.target = target
        self.headers = headers
        self.timeout = timeout
        self.prefix = target.path.rstrip("/")

    def send(self, method: str, path: str, body: Any = None) -> Reply:
        url = f"{self.target.scheme}://{self.target.netloc}{self.prefix}{path}"
        head = [
            f"{method} {self.prefix}{path} HTTP/1.1",
            f"Host: {self.target.netloc}",
            "Accept: */*",
            "Connection: close",
            f"User-Agent: dstack/{__version__}",
        ]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        payload = b""
        if body is not None:
            # As httpx encodes `json=`: compact, UTF-8, NaN refused.
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            payload = text.encode("utf-8")
            head.append("Content-Type: application/json")
        if payload or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(payload)}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
        try:
            sock = socket.create_connection(
                (self.target.hostname, self.target.port or 80), timeout=self.timeout
            )
        except OSError as e:  # refused, unreachable, unknown host, connect timeout
            raise ConnectFailed(str(e)) from e
        with sock:
            try:
                sock.sendall(request)
                raw = _read_all(sock)
            except TimeoutError as e:
                raise TimedOut(str(e)) from e
            except OSError as e:
                raise TransportFailed(str(e) or type(e).__name__) from e
        return _parse_reply(raw, url)


def _read_all(sock: socket.socket) -> bytes:
    """Until the answer is complete by its own framing, else until the server closes: a
    server or proxy that keeps the connection open despite `Connection: close` must not
    leave the command waiting for its timeout."""
    buf = bytearray()
    body_start, length, chunked = -1, None, False
    while True:
        data = sock.recv(65536)
        if not data:
            return bytes(buf)
        buf += data
        if body_start < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            body_start = end + 4
            length, chunked = _framing(bytes(buf[:end]))
        if length is not None and len(buf) - body_start >= length:
            return bytes(buf)
        if chunked and buf.endswith(b"0\r\n\r\n"):
            try:
                _dechunk(bytes(buf[body_start:]))
            except TransportFailed:
                continue  # the marker was chunk data; the last chunk is still to come
            return bytes(buf)


def _framing(head: bytes) -> tuple[int | None, bool]:
    """(Content-Length, chunked?) of an answer's head."""
    length, chunked = None, False
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "content-length" and value.isdigit():
            length = int(value)
    return (None, True) if chunked else (length, False)


def _parse_reply(raw: bytes, url: str) -> Reply:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if not sep or len(status) < 2 or not status[0].startswith("HTTP/") or not status[1].isdigit():
        raise TransportFailed("Server disconnected without sending a response.")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        content = _dechunk(rest)
    elif headers.get("content-length", "").isdigit():
        length = int(headers["content-length"])
        if len(rest) < length:
            raise TransportFailed("peer closed connection without sending complete message body")
        content = rest[:length]
    else:
        content = rest
    if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        raise TransportFailed(f"unexpected content encoding {headers['content-encoding']}")
    return Reply(int(status[1]), headers, content, url)


def _dechunk(data: bytes) -> bytes:
    out = []
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise TransportFailed("incomplete chunked encoding")
        size_text = data[pos:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as e:
            raise TransportFailed("malformed chunked encoding") from e
        if size == 0:
            return b"".join(out)
        start = end + 2
        if len(data) < start + size:
            raise TransportFailed("incomplete chunked encoding")
        out.append(data[start : start + size])
        pos = start + size + 2


class Transports:
    """The plain transport where it serves, httpx (made on first need) for the rest."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        self.base_url, self.headers, self.timeout = base_url, headers, timeout
        target = plain_target(base_url)
        self.plain = PlainHTTP(target, headers, timeout) if target is not None else None
        self.full: HttpxTransport | None = None

    def send(self, method: str, path: str, body: Any, kw: dict[str, Any]) -> Any:
        if self.plain is not None and not kw:
            return self.plain.send(method, path, body)
        return self.httpx().send(method, path, body, **dict(kw))

    def httpx(self) -> HttpxTransport:
        if self.full is None:
            self.full = HttpxTransport(self.base_url, self.headers, self.timeout)
        return self.full

    def use_client(self, client: Any) -> None:
        """Send every call through `client`, an httpx.Client or alike (a FastAPI TestClient)."""
        self.full = HttpxTransport(self.base_url, self.headers, self.timeout, client=client)
        self.plain = None

    def close(self) -> None:
        if self.full is not None:
            self.full.close()


class HttpxTransport:
    """Everything `PlainHTTP` does not do, with httpx's exceptions mapped to the three above."""

    def __init__(
        self, base_url: str, headers: dict[str, str], timeout: float, client: Any = None
    ) -> None:
        import httpx

        if client is not None:
            self._http = client
            return
        # httpx builds a verifying TLS context (certifi's bundle, ~40 ms) for its default
        # transport even when the server is plain http://. Requests here are always relative
        # to `base_url`, so a plain-http server never needs it; proxies from the environment
        # keep their own verifying transports.
        plain = base_url.startswith("http://")
        transport = httpx.HTTPTransport(verify=False) if plain else None
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def send(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        import httpx

        if body is not None and "files" not in kw:
            kw["json"] = body
        try:
            return self._http.request(method, path, **kw)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise ConnectFailed(str(e)) from e
        except httpx.TimeoutException as e:
            raise TimedOut(str(e)) from e
        except httpx.HTTPError as e:
            raise TransportFailed(str(e)) from e

    def close(self) -> None:
        self._http.close()
