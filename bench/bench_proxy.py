"""Service proxy overhead: the same app called directly and through `/proxy/services/...`.

Usage: python bench/bench_proxy.py [-n REQUESTS] [-c CONCURRENCY] [--app threaded|asgi|asyncio|all]
Starts a real server (temporary HOME) with the local backend, runs an app as a one-replica
service, then measures (1) sequential latency, direct vs proxied, with a light keep-alive
asyncio client, and the added latency at p50 and p99, and (2) requests per second with C
concurrent keep-alive connections, direct vs proxied, alternated for --rounds rounds and
compared by median.

The rps load comes from `wrk` (Debian package `wrk`) when it is installed: a Python load
client needs a core of its own on this 2-CPU machine, and then measures itself rather than
the proxy. Without wrk the asyncio client is used and the report says so.

Three apps: a standard-library threaded HTTP server (a real Python app's cost per request), a
minimal ASGI app under uvicorn (what most Python model servers are built on), and a bare
asyncio server that answers from a constant (no work at all: the proxy's worst case).
Targets (issue 5): under 1 ms added at p50, proxied rps at least 70 % of direct, judged on the
threaded app; the other two print the proxy's ceiling (rps of one server process), since an app
that does no work per request is faster than any proxy written in Python.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
# The tests folder itself: gpuhunt installs a top-level `tests` package that shadows ours.
sys.path.insert(0, str(REPO / "tests"))

from dstack.server.proxy.http1 import Pool  # noqa: E402  (a light keep-alive load client)
from e2e.harness import Server, free_port, wait_until  # noqa: E402

APP = r"""
import asyncio, os
BODY = b'{"ok": true}'
RESP = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            if n:
                await reader.readexactly(n)
            writer.write(RESP)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()
async def main():
    port = int(os.environ["DSTACK_SERVICE_PORT"])
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


THREADED_APP = r"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a):
        pass
    def do_GET(self):
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["DSTACK_SERVICE_PORT"])), H).serve_forever()
"""


ASGI_APP = r"""
import os
import uvicorn
BODY = b'{"ok": true}'
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["DSTACK_SERVICE_PORT"]),
            log_level="warning", access_log=False)
"""

APPS = {"threaded": THREADED_APP, "asgi": ASGI_APP, "asyncio": APP}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p * (len(values) - 1))))]


async def _get(pool: Pool, url: str, headers: dict[str, str]) -> int:
    u = urlsplit(url)
    hdrs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    resp = await pool.request("GET", u.hostname, u.port, u.path, hdrs, b"", 30.0)
    async for _ in resp.body:
        pass
    return resp.status


async def latency(url: str, headers: dict[str, str], n: int) -> list[float]:
    pool = Pool()
    for _ in range(50):
        await _get(pool, url, headers)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        status = await _get(pool, url, headers)
        out.append((time.perf_counter() - t0) * 1000)
        assert status == 200
    await pool.close()
    return out


async def throughput(url: str, headers: dict[str, str], n: int, conc: int) -> float:
    pool = Pool()
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            assert await _get(pool, url, headers) == 200

    await asyncio.gather(*(_get(pool, url, headers) for _ in range(conc)))
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    rps = n / (time.perf_counter() - t0)
    await pool.close()
    return rps


def wrk_rps(url: str, headers: dict[str, str], conc: int, seconds: float) -> float:
    cmd = ["wrk", "-t1", f"-c{conc}", f"-d{seconds:g}s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise SystemExit(f"could not read wrk's output:\n{out}")
    return float(m.group(1))


def rps_rounds(
    direct: str, proxied: str, headers: dict[str, str], args: argparse.Namespace
) -> tuple[float, float, str]:
    """Direct and proxied alternated, so drift on the machine hits both alike; medians."""
    d_all: list[float] = []
    p_all: list[float] = []
    use_wrk = shutil.which("wrk") is not None
    for _ in range(args.rounds):
        if use_wrk:
            d_all.append(wrk_rps(direct, {}, args.concurrency, args.seconds))
            p_all.append(wrk_rps(proxied, headers, args.concurrency, args.seconds))
        else:
            d_all.append(asyncio.run(throughput(direct, {}, args.requests, args.concurrency)))
            p_all.append(asyncio.run(throughput(proxied, headers, args.requests, args.concurrency)))
    client = "wrk" if use_wrk else "the Python asyncio client (install wrk for a fair number)"
    return statistics.median(d_all), statistics.median(p_all), client


def bench_app(srv: Server, home: Path, app: str, args: argparse.Namespace) -> bool:
    work = home / f"svc-{app}"
    work.mkdir()
    (work / "app.py").write_text(APPS[app])
    port = free_port()
    name = f"bench-{app}"
    conf = (
        f"type: service\nname: {name}\nport: {port}\n"
        f"commands:\n  - {json.dumps(sys.executable + ' app.py')}\n"
        "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"
    )
    (work / "bench.dstack.yml").write_text(conf)
    r = srv.cli("apply", "-f", "bench.dstack.yml", "-y", "-d", cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    headers = {"Authorization": f"Bearer {srv.token}"}
    direct = f"http://127.0.0.1:{port}/"
    proxied = f"{srv.url}/proxy/services/main/{name}/"

    def up() -> bool:
        try:
            return httpx.get(proxied, headers=headers, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=60, what="the bench service")
    d_lat = asyncio.run(latency(direct, {}, args.requests))
    p_lat = asyncio.run(latency(proxied, headers, args.requests))
    d_rps, p_rps, client = rps_rounds(direct, proxied, headers, args)
    srv.cli("stop", name, "-y")
    added50 = statistics.median(p_lat) - statistics.median(d_lat)
    added99 = pct(p_lat, 0.99) - pct(d_lat, 0.99)
    print(f"app: {app}; {args.requests} sequential requests for latency; rps by {client}, ")
    print(f"  {args.concurrency} connections, median of {args.rounds} alternated rounds")
    print(
        f"  direct   p50 {statistics.median(d_lat):.3f} ms  p99 {pct(d_lat, 0.99):.3f} ms  "
        f"{d_rps:,.0f} rps"
    )
    print(
        f"  proxied  p50 {statistics.median(p_lat):.3f} ms  p99 {pct(p_lat, 0.99):.3f} ms  "
        f"{p_rps:,.0f} rps"
    )
    print(f"  added    p50 {added50:.3f} ms  p99 {added99:.3f} ms  rps ratio {p_rps / d_rps:.0%}")
    ok = added50 < 1.0 and p_rps >= 0.7 * d_rps
    if app == "threaded":
        print("  targets (<1 ms at p50, >=70 % rps):", "met" if ok else "NOT met", flush=True)
    else:  # the app does next to nothing: its ratio is the proxy's own ceiling, not overhead
        print(
            f"  ceiling: one server process proxies about {p_rps:,.0f} rps; an app that does "
            "no work per request answers faster than any Python proxy can (added p50 "
            f"{'<' if added50 < 1.0 else '>='}1 ms)",
            flush=True,
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--requests", type=int, default=2000)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument(
        "--app",
        choices=(*APPS, "all"),
        default="all",
        help="the app behind the proxy: a standard-library threaded server (a real Python "
        "app's cost per request), a minimal ASGI app under uvicorn, a bare asyncio server "
        "answering from a constant (the proxy's worst case), or all three",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one wrk round")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    srv = Server(home=home)
    srv.start()
    try:
        apps = tuple(APPS) if args.app == "all" else (args.app,)
        for app in apps:
            bench_app(srv, home, app, args)
    finally:
        srv.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
