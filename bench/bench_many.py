"""Many small jobs on one host (issue "Fast at every size"): 300 `echo` tasks on the local
backend, from the first submission until every run is finished, in jobs per second.

    python bench/bench_many.py [--jobs 300] [--rounds 3]

The runs are submitted through the API (`runs/apply`, 8 requests in flight) by this process,
which then watches `runs/list` (every 0.2 s) until none is left unfinished. One real server and
agent; the first, untimed run creates the local instance. Target: >= 20 jobs/s (median of the
rounds). A round fails loudly if any run ends other than `done`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

# The tests folder itself: gpuhunt installs a top-level `tests` package that shadows ours.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.harness import Server  # noqa: E402

CONCURRENCY = 8
TARGET = 20.0
FINISHED = ("done", "failed", "terminated")


def run_spec(name: str) -> dict:
    conf = {
        "type": "task",
        "commands": [f"echo {name}"],
        "resources": {"cpu": "1..", "memory": "0.1GB..", "disk": "1GB.."},
    }
    return {"run_name": name, "configuration": conf}


async def _submit(server: Server, names: list[str]) -> None:
    headers = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.url}/api/project/main/runs/apply"
    pending = iter(names)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def worker() -> None:
            for name in pending:
                body = {"plan": {"run_spec": run_spec(name), "current_resource": None}}
                r = await client.post(url, json=body, headers=headers)
                while r.status_code == 503 and "retry-after" in r.headers:
                    # Busy database, nothing written: ask again, as the CLI's client does.
                    await asyncio.sleep(float(r.headers["retry-after"]))
                    r = await client.post(url, json=body, headers=headers)
                if r.status_code != 200:
                    raise RuntimeError(f"runs/apply answered {r.status_code}: {r.text[:300]}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def _statuses(server: Server, prefix: str) -> dict[str, str]:
    """Every run of this round by name, paged through runs/list (newest first)."""
    out: dict[str, str] = {}
    body: dict = {"limit": 100, "project_name": "main"}
    while True:
        r = server.api("/api/runs/list", body)
        r.raise_for_status()
        page = r.json()
        for run in page:
            name = run["run_spec"]["run_name"]
            if name.startswith(prefix):
                out[name] = run["status"]
        if len(page) < 100:
            return out
        last = page[-1]
        body = dict(body, prev_submitted_at=last["submitted_at"], prev_run_id=last["id"])


def passes(server: Server) -> dict[str, float]:
    """Reconciler passes so far, by kind (the server's own Prometheus counters)."""
    r = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.token}"})
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line.startswith("dstack_reconciler_pass_duration_seconds_count"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


def one_round(server: Server, n: int, prefix: str) -> float:
    names = [f"{prefix}-{i}" for i in range(n)]
    start = time.perf_counter()
    asyncio.run(_submit(server, names))
    while True:
        statuses = _statuses(server, prefix)
        if len(statuses) == n and all(s in FINISHED for s in statuses.values()):
            break
        if time.perf_counter() - start > 600:
            left = sum(s not in FINISHED for s in statuses.values())
            raise RuntimeError(f"{left} of {n} runs still unfinished after 600 s")
        time.sleep(0.2)
    elapsed = time.perf_counter() - start
    bad = {k: v for k, v in statuses.items() if v != "done"}
    if bad:
        raise RuntimeError(f"{len(bad)} runs did not end done, e.g. {list(bad.items())[:3]}")
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", metavar="FILE", help="py-spy raw profile of the server")
    args = parser.parse_args()
    spy = None
    rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(home=Path(tmp), extra_env={"DSTACK_ENABLE_PROMETHEUS_METRICS": "1"})
        server.start()
        try:
            one_round(server, 1, "warm")  # creates the local instance
            if args.profile:  # py-spy on the server for the rounds (a raw file per process)
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                        "-f", "raw", "-r", "100", "-o", args.profile,
                                        "-p", str(server.proc.pid)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for r in range(args.rounds):
                before = passes(server)
                rates.append(one_round(server, args.jobs, f"many{r}"))
                after = passes(server)
                per_job = ", ".join(f"{k} {(v - before.get(k, 0)) / args.jobs:.1f}"
                                    for k, v in sorted(after.items()))
                print(f"round {r + 1}: {rates[-1]:.1f} jobs/s (passes per job: {per_job})",
                      flush=True)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            server.cleanup()
    print(f"{args.jobs} echo tasks on one host: median {statistics.median(rates):.1f} jobs/s "
          f"(target >= {TARGET:.0f})")


if __name__ == "__main__":
    main()
