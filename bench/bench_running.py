"""What tasks that just run cost the server (issue "Fast at every size"): N `sleep` tasks
running on the local backend, the reconciler passes per second and the server's CPU (share of
one core) over a window while nothing changes.

    python bench/bench_running.py [--tasks 60] [--window 20]

A running task's run has nothing to decide until one of its jobs moves (each job status change
marks the run due), so its passes per second should be near zero; its jobs are looked at on
their poll interval (`DSTACK_SERVER_JOB_POLL_SECONDS`). One real server and agent, as
`bench_many.py` starts them.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import bench_many as bm


def sleep_spec(name: str) -> dict:
    spec = bm.run_spec(name)
    spec["configuration"]["commands"] = ["sleep 600"]
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"DSTACK_ENABLE_PROMETHEUS_METRICS": "1", "DSTACK_DB_STRICT": "0"}
        server = bm.Server(home=Path(tmp), extra_env=env)
        server.start()
        try:
            names = [f"idle-{i}" for i in range(args.tasks)]
            asyncio.run(bm._submit(server, names, spec=sleep_spec))
            while sum(s == "running" for s in bm._statuses(server, "idle").values()) < args.tasks:
                time.sleep(0.5)
            time.sleep(3)  # the last starts settle
            pid = server.proc.pid if server.proc else None
            p0, c0 = bm.passes(server), bm._proc_cpu(pid)
            time.sleep(args.window)
            p1, c1 = bm.passes(server), bm._proc_cpu(pid)
        finally:
            server.cleanup()
    rates = ", ".join(f"{k} {(v - p0.get(k, 0)) / args.window:.1f}" for k, v in sorted(p1.items()))
    print(f"{args.tasks} running tasks: passes per second: {rates}; "
          f"server CPU {(c1 - c0) / args.window * 100:.0f}% of a core")  # fmt: skip


if __name__ == "__main__":
    main()
