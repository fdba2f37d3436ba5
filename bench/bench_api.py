"""Whole-process API figures of one real server (issue "Fast at every size"):

    python bench/bench_api.py [--runs 1000] [--rounds 3] [--seconds 5] [--only apply|list]

- submissions: `runs/apply` through the API, 8 requests in flight, runs per second (the runs ask
  for 8 GPUs the local backend does not have, so they end as "no capacity" without starting
  processes that would compete for the CPU);
- runs/list: pages of 100 over the `--runs` runs, 8 connections, requests per second and p99,
  once every submitted run has ended, driven by `wrk`;
- `dstack ps` against the running server, whole process;
- cold start: `dstack server` launched until its first authenticated answer.

`--only list`: the submissions (to have the runs) and runs/list, nothing else; with the server's
CPU per page (what a shared machine's load changes least).

The other clients run in this process (asyncio + httpx), on the same cores as the server: the
figures are what one machine does, client included. Medians over `--rounds`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

# The tests folder itself: gpuhunt installs a top-level `tests` package that shadows ours.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_cold import cpu_seconds, launch  # noqa: E402 - this folder, first on sys.path

from e2e.harness import Server  # noqa: E402

CONCURRENCY = 8
# The server as users run it: the harness turns on the tests' strict session checks
# (DSTACK_DB_STRICT, db/session.py), which record a stack for every session opened.
PRODUCTION = {"DSTACK_DB_STRICT": "0"}


def run_spec(name: str) -> dict:
    conf = {"type": "task", "commands": ["true"], "resources": {"gpu": "H100:8"}}
    return {"run_name": name, "configuration": conf}


async def _workers(n_items: int, work) -> list[float]:  # noqa: ANN001
    """`n_items` calls of `work(i, client)` with CONCURRENCY in flight; latency of each."""
    latencies: list[float] = []
    counter = iter(range(n_items))
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker() -> None:
            for i in counter:
                start = time.perf_counter()
                await work(i, client)
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies


def submissions(server: Server, n: int, prefix: str) -> float:
    headers = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.url}/api/project/main/runs/apply"

    async def apply(i: int, client: httpx.AsyncClient) -> None:
        body = {"plan": {"run_spec": run_spec(f"{prefix}-{i}"), "current_resource": None}}
        r = await client.post(url, json=body, headers=headers)
        if r.status_code != 200:
            raise RuntimeError(f"runs/apply answered {r.status_code}: {r.text[:300]}")

    start = time.perf_counter()
    asyncio.run(_workers(n, apply))
    return n / (time.perf_counter() - start)


def server_cpu_seconds(server: Server) -> float:
    """User + system CPU time of the server process so far: on a shared machine the CPU a
    batch cost the server is steadier than its wall-clock rate."""
    assert server.proc is not None
    return cpu_seconds(server.proc.pid)


def settled_after(server: Server, since: float) -> float:
    """Seconds from `since` until no run of the server is active any more: the reconcilers
    have taken every submission to its final status ("no capacity" here)."""
    headers = {"Authorization": f"Bearer {server.token}"}
    body = {"only_active": True, "limit": 1}
    while True:
        r = httpx.post(f"{server.url}/api/runs/list", json=body, headers=headers, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"runs/list answered {r.status_code}: {r.text[:200]}")
        if not r.json():
            return time.perf_counter() - since
        time.sleep(0.02)


WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"limit": 100}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""
WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def list_pages(server: Server, seconds: float) -> tuple[float, float]:
    """runs/list pages of 100 from 8 connections: requests per second and p99 (s), driven by
    `wrk` (Debian package `wrk`) so that the load client is not a second Python process
    competing for the 2 cores; without wrk, the in-process httpx client (the line says so)."""
    headers = {"Authorization": f"Bearer {server.token}"}
    r = httpx.post(f"{server.url}/api/runs/list", json={"limit": 100}, headers=headers, timeout=60)
    if r.status_code != 200 or len(r.json()) != 100:
        raise RuntimeError(f"runs/list answered {r.status_code}: {r.text[:200]}")
    if shutil.which("wrk") is None:
        return _httpx_list_pages(server, seconds)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT % server.token)
        script.flush()
        cmd = ["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{seconds:g}s", "--latency", "-s", script.name]
        out = subprocess.run(
            cmd + [f"{server.url}/api/runs/list"], capture_output=True, text=True, check=True
        ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if rps is None or p99 is None:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    return float(rps.group(1)), float(p99.group(1)) * WRK_UNITS[p99.group(2)] / 1000


def _httpx_list_pages(server: Server, seconds: float) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.url}/api/runs/list"
    deadline = time.perf_counter() + seconds
    done: list[float] = []

    async def run() -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:

            async def worker() -> None:
                while time.perf_counter() < deadline:
                    start = time.perf_counter()
                    r = await client.post(url, json={"limit": 100}, headers=headers)
                    if r.status_code != 200:
                        raise RuntimeError(f"runs/list answered {r.status_code}: {r.text[:200]}")
                    done.append(time.perf_counter() - start)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    start = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - start
    p99 = sorted(done)[max(0, int(round(0.99 * (len(done) - 1))))]
    return len(done) / elapsed, p99


def ps_time(server: Server) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dstack.cli.main", "ps"],
        env=server.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )
    return time.perf_counter() - start


def bytecode_note() -> str:
    """`dstack ps` and the cold start differ by whether the package is byte-compiled (an
    editable install is not; README's set-up line does it), so the figures say which ran."""
    import importlib.util

    import dstack.cli.main as probe

    cached = importlib.util.cache_from_source(probe.__file__)
    fresh = os.path.exists(cached) and os.path.getmtime(cached) >= os.path.getmtime(probe.__file__)
    return "src/ bytecode: " + ("yes" if fresh else "no (python -m compileall -q src)")


def line(name: str, samples: list[float], unit: str, target: str) -> str:
    return f"{name:<34} median {statistics.median(samples):9.3f} {unit:<6} {target}  {samples}"


def print_list(runs: int, lists: list[float], p99s: list[float], cpu_ms: list[float]) -> None:
    client = "wrk" if shutil.which("wrk") else "httpx in-process: install wrk for a fair figure"
    print(line(f"runs/list page 100 of {runs}", lists, "req/s", f"(target >= 150) [{client}]"))
    print(line("runs/list p99", p99s, "ms", "(target <= 50)"))
    print(line("runs/list server CPU a page", cpu_ms, "ms", "(all its threads)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument(
        "--only",
        choices=["apply", "list"],
        help="apply: the submissions (and their settling) only; list: submissions and runs/list",
    )
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-api-"))
    server = Server(home, extra_env=PRODUCTION)
    server.start()
    rates, lists, p99s, ps, cpus, cpu_ms = [], [], [], [], [], []
    try:
        per_round = max(1, args.runs // args.rounds)
        settles = []
        for r in range(args.rounds):
            start, cpu = time.perf_counter(), server_cpu_seconds(server)
            rates.append(round(submissions(server, per_round, f"b{r}"), 1))
            cpus.append(round((server_cpu_seconds(server) - cpu) * 1000 / per_round, 2))
            settles.append(round(settled_after(server, start), 2))
        if args.only == "apply":
            print(line("runs/apply, 8 in flight", rates, "runs/s", "(target >= 100)"))
            print(line("  server CPU per submission", cpus, "ms", "(while submitting)"))
            ended = f"{per_round} runs submitted, all ended"
            print(line(ended, settles, "s", "(from the first apply)"))
            return
        for _ in range(args.rounds):
            used = server_cpu_seconds(server)
            rps, p99 = list_pages(server, args.seconds)
            used = server_cpu_seconds(server) - used
            cpu_ms.append(round(used * 1000 / (rps * args.seconds), 2))
            lists.append(round(rps, 1))
            p99s.append(round(p99 * 1000, 1))
        for _ in range(0 if args.only else max(5, args.rounds)):
            ps.append(round(ps_time(server), 3))
    finally:
        server.stop()
    if args.only:
        print_list(args.runs, lists, p99s, cpu_ms)
        return
    colds = [round(launch(home, None)[0], 3) for _ in range(args.rounds)]
    print(line("runs/apply, 8 in flight", rates, "runs/s", "(target >= 100)"))
    print(line("  server CPU per submission", cpus, "ms", "(while submitting)"))
    print(line(f"{per_round} runs submitted, all ended", settles, "s", "(from the first apply)"))
    print_list(args.runs, lists, p99s, cpu_ms)
    print(line("dstack ps", ps, "s", "(target <= 0.15)"))
    print(line("cold start to first answer", colds, "s", "(target <= 0.7)"))
    print(bytecode_note())


if __name__ == "__main__":
    main()
