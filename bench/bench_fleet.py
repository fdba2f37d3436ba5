"""SSH fleet timings on real hosts (sshd in network namespaces, as the tests make them):
bootstrap time per host, and apply-to-running of a task on an idle SSH host.

    sudo python bench/bench_fleet.py [--hosts N] [--runs N]

bootstrap: from launching `dstack apply -f fleet.dstack.yml -y -d` for a fresh fleet of N hosts
until every instance is `idle` (divided by nothing: hosts bootstrap in parallel, so the number
is the time for the whole fleet; the per-host line bootstraps one host alone, repeated after
deleting the fleet, so it includes the prerequisite checks, the zipapp copy and the agent start).
apply-to-running: as bench_run.py, on an idle instance of the SSH fleet (the tunnel is warm).
Needs root (namespaces and users); targets: bootstrap < 10 s per host, apply-to-running < 1 s p50.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# The tests folder itself (not the repo root): gpuhunt installs a top-level `tests` package
# that would shadow ours.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_run import apply_to_running, cli, stats  # noqa: E402

from e2e.harness import Server, wait_until  # noqa: E402
from e2e.ssh import hosts as sshhosts  # noqa: E402
from e2e.ssh.test_fleets import fleet_yaml  # noqa: E402


def _instances(server: Server, name: str) -> list[dict]:
    r = server.api("/api/project/main/fleets/get", {"name": name})
    return r.json()["instances"] if r.status_code == 200 else []


def bootstrap(server: Server, work: Path, hs: list[sshhosts.Host], key: Path, name: str) -> float:
    (work / "fleet.dstack.yml").write_text(fleet_yaml(name, hs, key))
    start = time.perf_counter()
    cli(server, "apply", "-f", "fleet.dstack.yml", "-y", "-d", cwd=work).wait(timeout=60)
    while True:
        insts = _instances(server, name)
        if insts and all(i["status"] == "idle" for i in insts):
            return time.perf_counter() - start
        if any(i["status"] == "terminated" for i in insts):
            raise RuntimeError(f"bootstrap failed: {insts}")
        if time.perf_counter() - start > 120:
            raise RuntimeError(f"bootstrap too slow: {insts}")
        time.sleep(0.01)


def delete(server: Server, name: str) -> None:
    server.api("/api/project/main/fleets/delete", {"names": [name]})
    wait_until(
        lambda: server.api("/api/project/main/fleets/get", {"name": name}).status_code == 400,
        timeout=60,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    why = sshhosts.available()
    if why:
        sys.exit(why)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        (root / "work").mkdir()
        key = sshhosts.keygen(root / "keys" / "id")
        hosts = sshhosts.Hosts(root / "hosts", key)
        server = Server(home=root / "home", extra_env={"DSTACK_SERVER_LOCAL_BACKEND": "0"})
        results: dict[str, list[float]] = {}
        try:
            hs = [hosts.add() for _ in range(args.hosts)]
            server.start()
            results["bootstrap (one host)"] = []
            for i in range(3):
                results["bootstrap (one host)"].append(
                    bootstrap(server, root / "work", hs[:1], key, f"one-{i}")
                )
                delete(server, f"one-{i}")
            results[f"bootstrap ({args.hosts} hosts)"] = [
                bootstrap(server, root / "work", hs, key, "bench")
            ]
            results["apply-to-running"] = [
                apply_to_running(server, root / "work", i) for i in range(args.runs)
            ]
        finally:
            server.cleanup()
            hosts.destroy()
    for name, samples in results.items():
        print(stats(name, samples))


if __name__ == "__main__":
    main()
