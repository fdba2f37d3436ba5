"""Submit → running on an idle Slurm node, through the `slurm` backend (target: under 3 s).

    python bench/bench_slurm.py [--rounds N]      # root: the test cluster uses netns hosts

Starts the test Slurm 22.05 cluster (tests/e2e/slurm/cluster.py) and a real server configured
for it. Each round: `dstack apply -y -d` of a one-CPU task, timed until the API reports the run
`running` (polled every 5 ms), from launching the CLI (its start-up and the plan included) and
from the run's `submitted_at` (the target's figure): the server's sbatch over SSH, Slurm's
scheduling tick, the batch script starting the agent on the node, the agent answering through
the login node, the job started. Then `stop -x` and a wait until Slurm lists no job, so every
round gets a fresh allocation on an idle node (the fleet's `idle_duration: 0s`).

For comparison, `sbatch` → `RUNNING` of a bare batch job straight on the login host (no
dstack), polling `squeue` every 50 ms: what Slurm's own scheduling costs here.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

# `tests/` itself on the path: a third-party wheel may install a package named `tests` that
# would shadow the repository's (a namespace package loses to a regular one).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.harness import Server, wait_until, write_config  # noqa: E402
from e2e.slurm.cluster import SlurmCluster, available  # noqa: E402

FLEET = "type: fleet\nname: hpc\nnodes: 0..4\nbackends: [slurm]\nidle_duration: 0s\n"
TASK = (
    "type: task\nname: {name}\ncommands: [sleep 600]\n"
    "resources: {{cpu: 1.., memory: 0.1GB.., disk: 0.1GB..}}\n"
)
TARGET_S = 3.0


def stats(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    return (
        f"{name:<34} median {statistics.median(s):6.3f} s   min {s[0]:6.3f} s   "
        f"max {s[-1]:6.3f} s   (n={len(s)})"
    )


def no_slurm_jobs(c: SlurmCluster) -> bool:
    return not c.run_login("squeue -h -o %i").stdout.strip()


def submit_to_running(srv: Server, c: SlurmCluster, work: Path, i: int) -> tuple[float, float]:
    """(from launching the CLI, from the server's `submitted_at`) to `running`."""
    name = f"bench-slurm-{i}"
    write_config(work, "t.dstack.yml", TASK.format(name=name))
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstack.cli.main", "apply", "-f", "t.dstack.yml", "-y", "-d"],
        cwd=work,
        env=srv.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    while True:
        r = srv.api("/api/project/main/runs/get", {"run_name": name})
        if r.status_code == 200 and r.json()["status"] == "running":
            elapsed = time.perf_counter() - start
            seen = time.time()
            break
        if time.perf_counter() - start > 90:
            raise RuntimeError(f"{name} did not reach running: {r.text[:300]}")
        time.sleep(0.005)
    proc.wait(timeout=30)
    srv.api("/api/project/main/runs/stop", {"runs_names": [name], "abort": True})
    wait_until(lambda: srv.run(name)["status"] in ("terminated", "failed"), timeout=60)
    wait_until(lambda: no_slurm_jobs(c), timeout=60, what="the allocation to end")
    submitted = r.json()["submitted_at"].replace("Z", "+00:00")
    return elapsed, seen - datetime.fromisoformat(submitted).timestamp()


def bare_sbatch(c: SlurmCluster) -> float:
    start = time.perf_counter()
    job = c.run_login("sbatch --parsable -c 1 --wrap 'sleep 600'").stdout.strip()
    while "RUNNING" not in c.run_login(f"squeue -h -j {job} -o %T").stdout:
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    c.run_login(f"scancel {job}")
    wait_until(lambda: no_slurm_jobs(c), timeout=60, what="the bare job to end")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    reason = available()
    if reason:
        sys.exit(f"cannot start the test Slurm cluster: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = SlurmCluster(root / "slurm")
        srv = Server(
            home=root / "home",
            extra_env={
                "DSTACK_SERVER_LOCAL_BACKEND": "0",
                "DSTACK_SERVER_INSTANCE_CHECK_SECONDS": "1",
            },
        )
        try:
            cluster.start()
            srv.home.mkdir()
            srv.server_dir.mkdir(parents=True)
            config = {"projects": [{"name": "main", "backends": [cluster.backend_config()]}]}
            (srv.server_dir / "config.yml").write_text(yaml.safe_dump(config))
            srv.start()
            work = root / "work"
            work.mkdir()
            write_config(work, "fleet.dstack.yml", FLEET)
            r = srv.cli("apply", "-f", "fleet.dstack.yml", "-y", cwd=work)
            if r.returncode != 0:
                raise RuntimeError(r.stdout + r.stderr)
            submit_to_running(srv, cluster, work, 999)  # warm-up: the agent copied, SSH open
            rounds = [submit_to_running(srv, cluster, work, i) for i in range(args.rounds)]
            bare = [bare_sbatch(cluster) for _ in range(args.rounds)]
        finally:
            srv.cleanup()
            cluster.stop()
    server_side = [r[1] for r in rounds]
    print(stats("dstack apply -d (CLI) -> running", [r[0] for r in rounds]))
    print(stats("submitted (server) -> running", server_side))
    print(stats("slurm alone: sbatch -> RUNNING", bare))
    verdict = "met" if statistics.median(server_side) < TARGET_S else "NOT met"
    print(f"target: submitted -> running, median under {TARGET_S:.0f} s: {verdict}")


if __name__ == "__main__":
    main()
