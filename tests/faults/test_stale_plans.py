"""A plan applied after someone else changed the resource: refused with 409 "changed since the
plan; re-run apply or use --force", and the other change stands; with --force, or with a fresh
plan, the apply goes through. Runs and fleets, on SQLite and on Postgres."""

from __future__ import annotations

from e2e.harness import wait_until

from .conftest import task_spec

STALE = "changed since the plan; re-run apply or use --force"


def _plan(srv, spec: dict) -> dict:  # noqa: ANN001
    r = srv.api("/api/project/main/runs/get_plan", {"run_spec": spec})
    assert r.status_code == 200, r.text
    return r.json()


def _apply(srv, spec: dict, current: dict | None, force: bool = False):  # noqa: ANN001, ANN202
    body = {"plan": {"run_spec": spec, "current_resource": current}, "force": force}
    return srv.api("/api/project/main/runs/apply", body)


def test_a_stale_run_plan_is_refused(db_server) -> None:  # noqa: ANN001
    srv = db_server
    name = f"stale-run-{srv.db}"
    first = task_spec(name, "sleep 120")
    assert _apply(srv, first, None).status_code == 200
    plan_a = _plan(srv, task_spec(name, "echo from-a"))
    assert plan_a["current_resource"]["generation"] == 1
    # B replaces the run meanwhile.
    r = _apply(
        srv, task_spec(name, "echo from-b; sleep 120"), plan_a["current_resource"], force=True
    )
    assert r.status_code == 200, r.text
    assert r.json()["generation"] == 2
    # A applies the plan it made before: refused, nothing changed.
    r = _apply(srv, task_spec(name, "echo from-a"), plan_a["current_resource"])
    assert r.status_code == 409, r.text
    assert STALE in r.json()["detail"][0]["msg"]
    # B's change stands: the replacement that runs is B's.
    run = wait_until(
        lambda: (
            (x := srv.run(name))["status"] in ("running", "provisioning", "submitted")
            and x["id"] != plan_a["current_resource"]["id"]
            and x
        ),
        timeout=60,
        what="B's replacement",
    )
    assert "from-b" in str(run["run_spec"]["configuration"]["commands"])
    # A fresh plan applies (here: refused only because the run is active, not as stale).
    plan_a2 = _plan(srv, task_spec(name, "echo from-a"))
    r = _apply(srv, task_spec(name, "echo from-a"), plan_a2["current_resource"])
    assert r.status_code == 400 and STALE not in r.text, r.text
    srv.api("/api/project/main/runs/stop", {"runs_names": [name], "abort": True})


def _fleet_spec(name: str) -> dict:
    return {"configuration": {"type": "fleet", "name": name, "nodes": "0..1"}}


def test_a_stale_fleet_plan_is_refused(db_server) -> None:  # noqa: ANN001
    srv = db_server
    name = f"stale-fleet-{srv.db}"
    spec = _fleet_spec(name)
    r = srv.api("/api/project/main/fleets/apply", {"plan": {"spec": spec}})
    assert r.status_code == 200, r.text
    plan = srv.api("/api/project/main/fleets/get_plan", {"spec": spec}).json()
    current = plan["current_resource"]
    assert current["generation"] == 1
    # Someone else applies in between.
    r = srv.api(
        "/api/project/main/fleets/apply", {"plan": {"spec": spec, "current_resource": current}}
    )
    assert r.status_code == 200 and r.json()["generation"] == 2, r.text
    r = srv.api(
        "/api/project/main/fleets/apply", {"plan": {"spec": spec, "current_resource": current}}
    )
    assert r.status_code == 409 and STALE in r.text, r.text
    # --force goes through.
    r = srv.api(
        "/api/project/main/fleets/apply",
        {"plan": {"spec": spec, "current_resource": current}, "force": True},
    )
    assert r.status_code in (200, 400), r.text
    assert STALE not in r.text
    srv.api("/api/project/main/fleets/delete", {"names": [name]})
