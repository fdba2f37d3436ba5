"""Job metrics on the server: storing agent samples (deduplicated, validated), the series the
route answers, retention, and the route itself through a whole app (real SQLite)."""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from dstack.errors import ServerClientError
from dstack.models import metrics as m
from dstack.models.runs import ApplyRunPlanInput, RunSpec
from dstack.models.wire import utcnow
from dstack.server.app import create_app
from dstack.server.db import tables as t
from dstack.server.services import metrics, run_apply
from dstack.server.settings import Settings

from .test_run_replacement import setup

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = "admin-token-for-metrics-tests"
MIB = 2**20


def _sample(ts: float, util: float = 50.0, gpus: int = 2) -> dict[str, Any]:
    return {
        "ts": ts,
        "cpu_usage_percent": 12.5,
        "memory_usage_bytes": 300 * MIB,
        "memory_working_set_bytes": 200 * MIB,
        "gpus": [
            {
                "index": i,
                "util": util + i,
                "memory_used_bytes": (i + 1) * 1000 * MIB,
                "memory_total_bytes": 81559 * MIB,
                "power_watts": 100.0 + i,
                "temperature_celsius": 40.0 + i,
            }
            for i in range(gpus)
        ],
    }


async def _job(ctx: Any, user: Any, project: Any, conf: dict[str, Any] | None = None) -> str:
    configuration = {"type": "task", "commands": ["true"], **(conf or {})}
    async with ctx.db.session() as s:
        plan = ApplyRunPlanInput(run_spec=RunSpec(run_name="mm", configuration=configuration))
        await run_apply.apply_plan(ctx, s, user, project, plan, False)
        return (await s.execute(select(t.Job.id))).scalar_one()


def test_store_dedups_validates_and_ignores_unknown_jobs(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx, user, project = await setup(tmp_path)
        job_id = await _job(ctx, user, project)
        now = time.time()
        batch = {
            job_id: [_sample(now - 20), _sample(now - 10), {"ts": "bad"}, "junk"],
            "no-such-job": [_sample(now)],
        }
        assert await metrics.store_samples(ctx.db, batch) == 2
        # The same samples again (a server restart asks from 0) and one new one.
        batch[job_id].append(_sample(now))
        assert await metrics.store_samples(ctx.db, batch) == 1
        hostile = {job_id: [{"ts": now + 1, "cpu_usage_percent": "x", "gpus": [{"util": True}]}]}
        assert await metrics.store_samples(ctx.db, hostile) == 1
        async with ctx.db.session() as s:
            points = await metrics.load_points(s, job_id, limit=10)
            assert [p.timestamp_ms for p in points] == sorted(p.timestamp_ms for p in points)
            assert len(points) == 4
            assert points[-1].cpu_usage_percent is None
            assert json.loads(points[-1].gpus) == [{k: None for k in m.GPU_SERIES.values()}]
            latest_two = await metrics.load_points(s, job_id, limit=2)
            assert latest_two == points[-2:]

    asyncio.run(scenario())


def test_series_names_and_values(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx, user, project = await setup(tmp_path)
        job_id = await _job(ctx, user, project)
        now = time.time()
        await metrics.store_samples(ctx.db, {job_id: [_sample(now - 10, 5), _sample(now, 7)]})
        async with ctx.db.session() as s:
            data = metrics.to_series(await metrics.load_points(s, job_id, limit=10))
        names = [x.name for x in data.metrics]
        assert names[:4] == [
            "cpu_usage_percent",
            "memory_usage_bytes",
            "memory_working_set_bytes",
            "gpus_detected_num",
        ]
        for i in (0, 1):
            for prefix in (
                "gpu_util_percent",
                "gpu_memory_usage_bytes",
                "gpu_power_draw_watts",
                "gpu_temperature_celsius",
            ):
                assert f"{prefix}_gpu{i}" in names
        assert data.series("gpu_util_percent_gpu1").values == [6.0, 8.0]
        assert data.series("gpus_detected_num").values == [2, 2]
        assert data.series("gpu_memory_usage_bytes_gpu1").values == [2000 * MIB] * 2
        assert len(data.series("cpu_usage_percent").timestamps) == 2

    asyncio.run(scenario())


def test_retention(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx, user, project = await setup(tmp_path)
        job_id = await _job(ctx, user, project)
        now = utcnow()
        old, recent = (now - timedelta(hours=2)).timestamp(), now.timestamp() - 5
        await metrics.store_samples(ctx.db, {job_id: [_sample(old), _sample(recent)]})

        async def count() -> int:
            async with ctx.db.session() as s:
                q = select(func.count()).select_from(t.JobMetricsPoint)
                return (await s.execute(q)).scalar_one()

        async with ctx.db.session() as s:
            assert await metrics.delete_old(s, now, 3600, 7 * 86400) == 1  # running: 1 h
        assert await count() == 1
        async with ctx.db.session() as s:
            await s.execute(
                update(t.Job).values(status="done", finished_at=now - timedelta(days=1))
            )
            await s.commit()
            assert await metrics.delete_old(s, now, 3600, 7 * 86400) == 0
            assert await metrics.delete_old(s, now, 3600, 3600) == 1  # finished a day ago
        assert await count() == 0

    asyncio.run(scenario())


def test_policy_window_longer_than_retention_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctx, user, project = await setup(tmp_path)
        policy = {"utilization_policy": {"min_gpu_utilization": 10, "time_window": "2h"}}
        with pytest.raises(ServerClientError) as e:
            await _job(ctx, user, project, policy)
        assert e.value.field == "run_spec.configuration.utilization_policy.time_window"
        assert "7200s" in e.value.message and "3600s" in e.value.message

    asyncio.run(scenario())


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        server_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        admin_token=TOKEN,
        local_backend_enabled=False,
        inventory_sweep_seconds=3600,
    )
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        yield c


def test_route(client: TestClient) -> None:
    spec = {"run_name": "mm", "configuration": {"type": "task", "commands": ["true"]}}
    applied = client.post("/api/project/main/runs/apply", json={"plan": {"run_spec": spec}})
    assert applied.status_code == 200, applied.text
    job_id = applied.json()["jobs"][0]["job_submissions"][-1]["id"]
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    now = time.time()
    samples = {job_id: [_sample(now - 30, 1), _sample(now - 20, 2), _sample(now - 10, 3)]}
    client.portal.call(metrics.store_samples, ctx.db, samples)  # type: ignore[attr-defined]
    url = "/api/project/main/metrics/job/mm"
    one = client.get(url)
    assert one.status_code == 200, one.text
    util = {x["name"]: x for x in one.json()["metrics"]}["gpu_util_percent_gpu0"]
    assert util["values"] == [3.0]  # limit defaults to 1: the latest point
    after = (utcnow() - timedelta(seconds=25)).isoformat()
    some = client.get(url, params={"limit": 10, "after": after}).json()
    util = {x["name"]: x for x in some["metrics"]}["gpu_util_percent_gpu0"]
    assert util["values"] == [2.0, 3.0] and len(util["timestamps"]) == 2
    assert client.get(url, params={"limit": 0}).status_code == 400
    assert client.get(url, params={"replica_num": 3}).status_code == 400
    assert client.get("/api/project/main/metrics/job/nope").status_code == 400
    anonymous = client.get(url, headers={"Authorization": "Bearer wrong"})
    assert anonymous.status_code in (401, 403)


def test_prometheus_is_off_by_default(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 404
    # Without a token the gate answers first: whether Prometheus is on is not disclosed.
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 403


def test_prometheus_on_the_api_port(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    settings = Settings(
        server_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        admin_token=TOKEN,
        local_backend_enabled=False,
        prometheus_enabled=True,
    )
    with TestClient(create_app(settings)) as c:
        spec = {"run_name": "mm", "configuration": {"type": "task", "commands": ["true"]}}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert c.post("/api/project/main/runs/apply", json={"plan": {"run_spec": spec}},
                      headers=headers).status_code == 200  # fmt: skip
        assert c.get("/metrics").status_code == 403
        c.portal.call(_add_user, c.app.state.ctx, "bob-token")  # type: ignore[attr-defined]
        bob = {"Authorization": "Bearer bob-token"}
        assert c.post("/api/users/get_my_user", headers=bob).status_code == 200
        assert c.get("/metrics", headers=bob).status_code == 403  # not a global admin
        r = c.get("/metrics", headers=headers)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        runs = [(s.labels["project_name"], s.value) for s in families["dstack_runs"].samples]
        assert runs and runs[0] == ("main", 1.0)
        assert "dstack_reconciler_pass_duration_seconds" in families


async def _add_user(ctx: Any, token: str) -> None:
    from dstack.server.services.users import create_user

    async with ctx.db.session() as s:
        await create_user(s, "bob", token=token)
        await s.commit()


def test_metrics_listener_address() -> None:
    from dstack.server.services.metrics_listener import parse_address

    assert parse_address("127.0.0.1:9090") == ("127.0.0.1", 9090)
    assert parse_address("[::1]:9090") == ("::1", 9090)
    for bad in ("9090", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError, match="DSTACK_SERVER_METRICS_ADDRESS"):
            parse_address(bad)
