"""Server cold start, whole process (issue "Fast at every size"):

    python bench/bench_cold.py [--rounds 9] [--against OTHER_SRC ...]

`dstack server` launched on an existing state directory until an authenticated `get_my_user`
answers 200: the wall time, and the CPU time (user + sys) the server process had used by then,
which a loaded machine inflates much less than the wall time. `--against DIR` runs the same
launches with `PYTHONPATH=DIR` (another checkout's `src/`, e.g. a `git archive` of the commit
before a change), interleaved with this tree's, so both see the same load. Medians of rounds.
"""

from __future__ import annotations

import argparse
import os
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

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + sys of a live process (its own, not its children's), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def launch(home: Path, src: str | None) -> tuple[float, float]:
    """(wall, CPU) seconds from launch to the first authenticated answer."""
    server = Server(home)
    if src:
        server.extra_env["PYTHONPATH"] = src
    client = httpx.Client(headers={"Authorization": f"Bearer {server.token}"}, timeout=1)
    log = open(home / "server.log", "ab")  # noqa: SIM115
    start = time.perf_counter()
    server.proc = subprocess.Popen(
        [sys.executable, "-m", "dstack.cli.main", "server", "--port", str(server.port)],
        env=server.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                r = client.post(f"{server.url}/api/users/get_my_user")
                if r.status_code == 200:
                    wall = time.perf_counter() - start
                    return wall, cpu_seconds(server.proc.pid)
            except httpx.HTTPError:
                pass
            if server.proc.poll() is not None:
                raise RuntimeError(f"server exited: {server.log_tail()}")
            time.sleep(0.005)
    finally:
        client.close()
        server.stop()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--against", action="append", default=[], help="another src/ to compare")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    first = Server(home)
    first.start()  # creates the state directory, the database and the CLI's config
    first.stop()
    trees: list[str | None] = [None, *args.against]
    samples: dict[str | None, list[tuple[float, float]]] = {t: [] for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            samples[tree].append(launch(home, tree))
    for tree in trees:
        walls = [round(w, 3) for w, _ in samples[tree]]
        cpus = [round(c, 2) for _, c in samples[tree]]
        print(f"{tree or 'this tree':<30} wall median {statistics.median(walls):.3f} s "
              f"(target <= 0.7)  cpu median {statistics.median(cpus):.2f} s  {walls}")


if __name__ == "__main__":
    main()
