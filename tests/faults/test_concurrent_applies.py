"""Twenty clients apply one run name at the same moment: exactly one run exists afterwards,
and every loser hears a clear refusal (400/409 with a message), never a 500; on SQLite and on
Postgres (where the unique index refuses the twin at flush, not at commit)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from .conftest import task_spec

CLIENTS = 20


def test_parallel_applies_of_one_name_make_one_run(db_server) -> None:  # noqa: ANN001
    srv = db_server
    name = f"race-{srv.db}"
    url = f"{srv.url}/api/project/main/runs/apply"
    headers = {"Authorization": f"Bearer {srv.token}"}
    body = {"plan": {"run_spec": task_spec(name, "sleep 60")}, "force": False}

    def apply(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            return client.post(url, json=body, headers=headers)

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(apply, range(CLIENTS)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) == 1, [(r.status_code, r.text[:200]) for r in answers]
    for r in answers:
        if r.status_code == 200:
            continue
        assert r.status_code in (400, 409), (r.status_code, r.text[:300])
        msg = r.json()["detail"][0]["msg"]
        assert name in msg and ("already active" in msg or "concurrent" in msg), msg
    runs = srv.api("/api/runs/list", {"only_active": False}).json()
    assert [r["run_spec"]["run_name"] for r in runs].count(name) == 1
    assert "Traceback" not in srv.log_tail()
    srv.api("/api/project/main/runs/stop", {"runs_names": [name], "abort": True})
