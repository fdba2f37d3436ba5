"""Whole-process timings of a run on the local backend: apply-to-running, apply-to-done, and
`dstack --version`. Medians and p90 over repeated runs; one real server, agent and CLI.

    python bench/bench_run.py [--runs N]

apply-to-running: from launching `dstack apply -y -d` until the API reports the run `running`
(polled every 5 ms), on an idle local instance (the first, untimed run creates it).
apply-to-done: the whole attached `dstack apply -y` of a trivial task, process start to exit.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The tests folder itself (not the repo root): gpuhunt installs a top-level `tests` package
# that would shadow ours.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.harness import Server, wait_until  # noqa: E402

SMALL = "resources: {{cpu: 1.., memory: 0.5GB.., disk: 1GB..}}\n"
LONG = "type: task\nname: {name}\ncommands: [sleep 600]\n" + SMALL
TRIVIAL = "type: task\nname: {name}\ncommands: ['true']\n" + SMALL


def cli(server: Server, *args: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dstack.cli.main", *args], cwd=cwd, env=server.env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


# The issue "Fast at every size": a trivial task, attached, until it exits.
TARGETS = {"apply-to-done": "< 1.0 s"}


def stats(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    target = f"   target {TARGETS[name]}" if name in TARGETS else ""
    return (f"{name:<22} median {statistics.median(s):6.3f} s   p90 {p90:6.3f} s   "
            f"(n={len(s)}){target}")


def apply_to_running(server: Server, work: Path, i: int) -> float:
    name = f"bench-running-{i}"
    (work / "long.dstack.yml").write_text(LONG.format(name=name))
    start = time.perf_counter()
    proc = cli(server, "apply", "-f", "long.dstack.yml", "-y", "-d", cwd=work)
    while True:
        r = server.api("/api/project/main/runs/get", {"run_name": name})
        if r.status_code == 200 and r.json()["status"] == "running":
            elapsed = time.perf_counter() - start
            break
        if time.perf_counter() - start > 60:
            raise RuntimeError(f"{name} did not reach running: {r.text[:300]}")
        time.sleep(0.005)
    proc.wait(timeout=30)
    server.api("/api/project/main/runs/stop", {"runs_names": [name], "abort": True})
    wait_until(lambda: server.run(name)["status"] in ("terminated", "failed", "done"), timeout=30)
    return elapsed


def apply_to_done(server: Server, work: Path, i: int) -> float:
    name = f"bench-done-{i}"
    (work / "true.dstack.yml").write_text(TRIVIAL.format(name=name))
    start = time.perf_counter()
    proc = cli(server, "apply", "-f", "true.dstack.yml", "-y", cwd=work)
    _, err = proc.communicate(timeout=60)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited {proc.returncode}: {err.decode()[-500:]}")
    return elapsed


def version(server: Server, work: Path, i: int) -> float:
    start = time.perf_counter()
    cli(server, "--version", cwd=work).wait(timeout=30)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        work = Path(tmp) / "work"
        work.mkdir()
        server = Server(home=home)
        server.start()
        try:
            apply_to_done(server, work, 999)  # warm-up: creates the local instance
            results = {
                "dstack --version": [version(server, work, i) for i in range(args.runs)],
                "apply-to-running": [apply_to_running(server, work, i) for i in range(args.runs)],
                "apply-to-done": [apply_to_done(server, work, i) for i in range(args.runs)],
            }
        finally:
            server.cleanup()
    for name, samples in results.items():
        print(stats(name, samples))


if __name__ == "__main__":
    main()
