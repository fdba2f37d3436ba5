"""Several `dstack server` processes on one database (issue 14, docs/replicas.md), with real
processes: started together on a fresh database (SQLite file and Postgres), and three replicas
on Postgres sharing work while one is killed with SIGKILL during provisioning and during a
rolling update of a service."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e import pg
from e2e.harness import free_port_block, wait_until, write_config
from e2e.services_util import service, service_dir
from e2e.test_runs import task

from .replicas import DB, Replica, fresh_postgres, owner_pid, start_together, stop_all

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster() -> Iterator[pg.Cluster]:
    yield from pg.private_cluster("dstack-test-replicas-pg-")


def database(kind: str, home: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{home / '.dstack' / 'server' / 'data' / 'sqlite.db'}"
    return fresh_postgres(request.getfixturevalue("cluster"))


def apply(r: Replica, directory: Path, name: str, text: str) -> None:
    write_config(directory, f"{name}.dstack.yml", text)
    out = r.cli("apply", "-f", f"{name}.dstack.yml", "-y", "-d", cwd=directory)
    assert out.returncode == 0, out.stdout + out.stderr + r.log_tail()


@pytest.mark.parametrize(("kind", "count"), [("sqlite", 2), ("sqlite", 3), ("postgres", 2),
                                             ("postgres", 3)])  # fmt: skip
def test_servers_started_together_bootstrap_once_and_share_one_local_instance(
    kind: str, count: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    url = database(kind, home, request)
    replicas = [Replica(home=home, name=f"r{i}", database_url=url) for i in range(count)]
    db = None
    try:
        start_together(replicas)  # every one comes up: none dies in the migration
        db = DB(url)
        assert db.one("SELECT count(*) FROM users WHERE name = 'admin'") == 1
        assert db.one("SELECT count(*) FROM projects WHERE name = 'main'") == 1
        assert db.one("SELECT count(*) FROM fleets WHERE name = 'local'") == 1
        # One task through each replica at once: they race to create the local instance.
        d = tmp_path / "proj"
        names = [f"together-{i}" for i in range(count)]
        threads = [
            threading.Thread(target=apply, args=(r, d, n, task(n, f"echo ran-{n}")))
            for r, n in zip(replicas, names, strict=True)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for n in names:
            replicas[0].wait_status(n, "done", timeout=90)
        assert db.one("SELECT count(*) FROM instances") == 1, db.rows(
            "SELECT name, status, termination_reason FROM instances"
        )
    finally:
        if db is not None:
            db.close()
        stop_all(replicas)


def holder_of(db: DB, replicas: list[Replica], query: str) -> Replica | None:
    """The live replica holding the lease of a row `query` returns (its lock owner)."""
    for (lock_owner,) in db.rows(query):
        pid = owner_pid(lock_owner)
        for r in replicas:
            if r.proc is not None and r.proc.poll() is None and r.pid == pid:
                return r
    return None


def kill_holder(db: DB, replicas: list[Replica], query: str, what: str) -> Replica:
    """SIGKILL the replica holding a lease of a row `query` returns, as soon as there is one."""
    victim = wait_until(
        lambda: holder_of(db, replicas, query), timeout=60, interval=0.02, what=what
    )
    victim.kill()
    return victim


# Any lease on the work of runs not yet running: the run, its job, or the instance.
PROVISIONING_LEASES = """
SELECT r.lock_owner FROM runs r WHERE r.lock_owner IS NOT NULL
  AND r.status IN ('submitted', 'provisioning')
UNION ALL SELECT j.lock_owner FROM jobs j WHERE j.lock_owner IS NOT NULL
  AND j.status IN ('submitted', 'provisioning')
UNION ALL SELECT i.lock_owner FROM instances i WHERE i.lock_owner IS NOT NULL
  AND i.status IN ('pending', 'provisioning')
"""


class Killer(threading.Thread):
    """Kills the first replica seen holding a provisioning lease among those no apply goes
    through any more (a CLI seeing its server vanish mid-request is test_errors' business)."""

    def __init__(self, db: DB, replicas: list[Replica]) -> None:
        super().__init__(daemon=True)
        self.db, self.replicas = db, replicas
        self.eligible: list[Replica] = []
        self.victim: Replica | None = None
        self.killed_at = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.victim is None:
            r = holder_of(self.db, list(self.eligible), PROVISIONING_LEASES)
            if r is not None:
                r.kill()
                self.victim, self.killed_at = r, time.monotonic()
                print(f"killed {r.name} holding a provisioning lease")
            time.sleep(0.01)

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r is not self.victim]


def test_three_replicas_share_the_work_and_survive_a_kill(
    cluster: pg.Cluster, tmp_path: Path
) -> None:
    lease = 6.0
    home = tmp_path / "home"
    home.mkdir()
    url = fresh_postgres(cluster)
    # Jobs as the server's user: they leave their marks in this test's (root-only) folder.
    extra = {"DSTACK_SERVICE_UNHEALTHY_COOLDOWN": "5", "DSTACK_LOCAL_JOB_USER": ""}
    replicas = [Replica(home=home, name=f"r{i}", database_url=url, lease_seconds=lease,
                        extra=extra) for i in range(3)]  # fmt: skip
    db = DB(url)
    marks = tmp_path / "marks"
    marks.mkdir()
    d = service_dir(tmp_path)
    killer = Killer(db, replicas)
    try:
        start_together(replicas)
        # 1. Tasks applied on each replica; the replica provisioning the local instance (or
        # placing the job on it) is killed mid-way.
        names = [f"work-{i}" for i in range(3)]
        killer.start()
        for r, n in zip(replicas, names, strict=True):
            # Each execution leaves one line: a job started twice would leave a second.
            apply(r, d, n, task(n, f"echo $DSTACK_RUN_NAME >> {marks}/{n}", "sleep 2",
                                f"echo logged-{n}"))  # fmt: skip
            killer.eligible.append(r)
        wait_until(lambda: killer.victim, timeout=60, what="a replica killed mid-provisioning")
        alive = killer.alive()
        for n in names:
            alive[0].wait_status(n, "done", timeout=lease + 60)
        took = time.monotonic() - killer.killed_at
        print(f"all tasks done {took:.1f}s after the kill (lease {lease}s)")
        assert took < lease + 20
        for n in names:
            assert (marks / n).read_text().splitlines() == [n], f"{n} ran more or less than once"
        assert db.one("SELECT count(*) FROM instances") == 1, db.rows(
            "SELECT name, status FROM instances"
        )
        assert db.one("SELECT count(*) FROM jobs") == 3  # no job was submitted twice
        for r in alive:  # logs read through any replica, whichever collected them
            for n in names:
                out = r.cli("logs", n)
                assert out.returncode == 0 and f"logged-{n}" in out.stdout, out.stdout + out.stderr

        # A replacement replica joins (3 alive again).
        back = Replica(home=home, name="r3", database_url=url, lease_seconds=lease, extra=extra)
        back.start()
        replicas.append(back)
        alive = [*alive, back]

        # 2. A service with a probe: one replica probes for all (not one per replica).
        port = free_port_block()
        health = tmp_path / "health.log"
        probes = "probes:\n  - type: http\n    url: /health\n    interval: 1s\n"
        env = {"APP_NAME": "v1", "HEALTH_LOG": str(health)}
        apply(alive[0], d, "svc", service("svc", port=port, extra=probes, env=env))
        wait_until(lambda: serving(alive[1], "svc") == "v1", timeout=90, what="v1 serving")
        before = len(health.read_text().splitlines())
        time.sleep(6)
        probed = len(health.read_text().splitlines()) - before
        assert 2 <= probed <= 9, f"{probed} probes in 6 s at a 1 s interval: probed by several"

        # 3. A rolling update applied on another replica; the replica driving it is killed.
        env["APP_NAME"] = "v2"
        apply(alive[2], d, "svc", service("svc", port=port, extra=probes, env=env))
        victim = kill_holder(
            db,
            alive,
            "SELECT j.lock_owner FROM jobs j JOIN runs r ON r.id = j.run_id "
            "WHERE r.run_name = 'svc' AND j.deployment_num = 1 AND j.lock_owner IS NOT NULL "
            "UNION ALL SELECT lock_owner FROM runs WHERE run_name = 'svc' "
            "AND lock_owner IS NOT NULL AND deployment_num = 1",
            "a replica driving the rolling update",
        )
        killed_at = time.monotonic()
        print(f"killed {victim.name} during the rolling update")
        alive = [r for r in alive if r is not victim]
        wait_until(lambda: serving(alive[0], "svc") == "v2", timeout=lease + 60, what="v2")
        print(f"v2 serves {time.monotonic() - killed_at:.1f}s after the kill")
        wait_until(
            lambda: live_jobs(db, "svc") == [(1, "running")],
            timeout=lease + 60,
            what="the old replica stopped, one new replica running",
        )
        # Nothing done twice: one old replica, one new one, one instance.
        assert db.rows(
            "SELECT j.deployment_num, count(*) FROM jobs j JOIN runs r ON r.id = j.run_id "
            "WHERE r.run_name = 'svc' GROUP BY j.deployment_num ORDER BY 1"
        ) == [(0, 1), (1, 1)]
        assert db.one("SELECT count(*) FROM instances") == 1
        for r in alive:
            assert serving(r, "svc") == "v2"
    finally:
        killer.stop.set()
        db.close()
        stop_all(replicas)


def serving(r: Replica, name: str) -> str | None:
    try:
        resp = httpx.get(
            f"{r.url}/proxy/services/main/{name}/",
            headers={"Authorization": f"Bearer {r.token}"},
            timeout=5,
        )
    except httpx.HTTPError:
        return None
    return resp.json().get("app") if resp.status_code == 200 else None


def live_jobs(db: DB, run_name: str) -> list[tuple]:
    return db.rows(
        "SELECT j.deployment_num, j.status FROM jobs j JOIN runs r ON r.id = j.run_id "
        "WHERE r.run_name = :n AND j.status NOT IN ('terminated', 'done', 'failed', 'aborted') "
        "ORDER BY 1",
        n=run_name,
    )

