"""Many small jobs on one host (issue "Fast at every size"): 300 `echo` tasks on the local
backend, from the first submission until every run is finished, in jobs per second.

    python bench/bench_many.py [--jobs 300] [--rounds 3]

The runs are submitted through the API (`runs/apply`, 8 requests in flight) by this process,
which then watches `runs/list` (every 0.2 s) until none is left unfinished. One real server and
agent, as users run them (without the tests' strict session checks); the first, untimed run
creates the local instance. Target: >= 20 jobs/s (median of the rounds). A round fails loudly
if any run ends other than `done`.

Each round also prints the CPU seconds spent per round by the server, the agent, and (where a
cgroup v2 hierarchy is writable, as root) everything else the server started: the spawner, the
supervisors, the jobs' SSH servers and the jobs themselves. CPU seconds, unlike jobs/s, hardly
move when other work shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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


async def _submit(server: Server, names: list[str], spec: Callable[[str], dict] = run_spec) -> None:
    headers = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.url}/api/project/main/runs/apply"
    pending = iter(names)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def worker() -> None:
            for name in pending:
                body = {"plan": {"run_spec": spec(name), "current_resource": None}}
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


CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of one live process itself, children left out."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuAccount:
    """CPU seconds of the server, its agent, and all they started (a cgroup of its own, when
    one can be made: processes that ended, as supervisors and jobs do, still count there)."""

    def __init__(self) -> None:
        self.group: Path | None = CGROUP_ROOT / f"bench-many-{os.getpid()}"
        try:
            self.group.mkdir()
        except OSError:
            self.group = None

    def prefix(self) -> list[str]:
        """Wraps the server's command line so that it starts inside the group."""
        if self.group is None:
            return []
        procs = self.group / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh"]

    def sample(self, server: Server) -> dict[str, float]:
        out = {"server": _proc_cpu(server.proc.pid if server.proc else None),
               "agent": _proc_cpu(server.agent_pid())}
        if self.group is not None:
            for line in (self.group / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    total = int(line.split()[1]) / 1e6
                    out["others"] = total - out["server"] - out["agent"]
        return out

    def close(self) -> None:
        """Remove the group once the processes in it (the agent stops after the server) are
        gone."""
        if self.group is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if not (self.group / "cgroup.procs").read_text().strip():
                    break
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            self.group.rmdir()


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


def _spy(pid: int | None, out: str) -> subprocess.Popen[bytes] | None:
    if pid is None:
        return None
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-f", "raw",
                             "-r", "100", "-o", out, "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy raw profiles: FILE (the server) and FILE.agent")
    args = parser.parse_args()
    spies: list[subprocess.Popen[bytes]] = []
    rates: list[float] = []
    cpus: list[float] = []
    account = CpuAccount()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"DSTACK_ENABLE_PROMETHEUS_METRICS": "1", "DSTACK_DB_STRICT": "0"}
        server = Server(home=Path(tmp), extra_env=env, argv_prefix=account.prefix())
        server.start()
        try:
            one_round(server, 1, "warm")  # creates the local instance
            if args.profile:  # py-spy on the server and the agent for the rounds
                spies = [p for p in (_spy(server.proc.pid, args.profile),
                                     _spy(server.agent_pid(), f"{args.profile}.agent")) if p]
            for r in range(args.rounds):
                before, cpu0 = passes(server), account.sample(server)
                rates.append(one_round(server, args.jobs, f"many{r}"))
                after, cpu1 = passes(server), account.sample(server)
                per_job = ", ".join(f"{k} {(v - before.get(k, 0)) / args.jobs:.1f}"
                                    for k, v in sorted(after.items()))
                used = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
                cpus.append(used["server"] + used["agent"])
                cpu = ", ".join(f"{k} {v:.1f}" for k, v in used.items())
                print(f"round {r + 1}: {rates[-1]:.1f} jobs/s (passes per job: {per_job}; "
                      f"CPU s: {cpu})", flush=True)
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            server.cleanup()
            account.close()
    print(f"{args.jobs} echo tasks on one host: median {statistics.median(rates):.1f} jobs/s "
          f"(target >= {TARGET:.0f}); server+agent CPU {statistics.median(cpus):.1f} s a round")


if __name__ == "__main__":
    main()
