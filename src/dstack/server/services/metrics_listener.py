"""The Prometheus endpoint alone on its own address (`DSTACK_SERVER_METRICS_ADDRESS`,
`host:port`), without a token: for scrapers that cannot send one, on an address only they
reach (a private interface, or loopback with a local agent). Everything but `GET /metrics`
is 404, so the API is never exposed there.

A few lines of asyncio rather than a second web server: one route, small requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dstack.server.db.session import Database

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024


def parse_address(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`; ValueError naming the variable when it is not one."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            "DSTACK_SERVER_METRICS_ADDRESS: expected HOST:PORT (e.g. 127.0.0.1:9090), "
            f"got {value!r}"
        )
    return host, int(port)


async def serve(server: asyncio.AbstractServer) -> None:
    """Serve until cancelled (the server's lifespan cancels it on shutdown), then close."""
    async with server:
        await server.serve_forever()


async def start(db: Database, address: str) -> asyncio.AbstractServer:
    host, port = parse_address(address)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            if len(head) > MAX_HEADER_BYTES:
                raise ValueError("headers too large")
            method, path = (head.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
            if method == b"GET" and path.split(b"?", 1)[0] == b"/metrics":
                from dstack.server.services import prometheus  # prometheus_client: when scraped

                async with db.session() as s:
                    body = await prometheus.exposition(s)
                await _answer(writer, b"200 OK", prometheus.CONTENT_TYPE, body)
            else:
                await _answer(writer, b"404 Not Found", "text/plain", b"not found\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        except Exception:
            log.exception("metrics listener: request failed")
            with contextlib.suppress(Exception):
                await _answer(writer, b"500 Internal Server Error", "text/plain", b"error\n")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port, limit=MAX_HEADER_BYTES)
    log.info("Prometheus metrics on http://%s:%s/metrics", host, port)
    return server


async def _answer(writer: asyncio.StreamWriter, status: bytes, ctype: str, body: bytes) -> None:
    head = (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype.encode()
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    writer.write(head + body)
    await writer.drain()
