"""Task node `groups` (configuration.md §7): one job per node across groups in order (job 0,
the master, is the first group's first node), each with its group's resources and commands,
all one multi-node replica; `${{ groups[i].nodes[j].IP_ADDRESS }}` resolves to that node's IP
when the job starts. A plan with `groups` answers (it was HTTP 500)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from dstack.errors import ServerClientError
from dstack.models.configurations import parse_configuration
from dstack.server.app import create_app
from dstack.server.services.jobspecs import build_job_specs
from dstack.server.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TASK = {
    "type": "task",
    "groups": [
        {"name": "head", "commands": ["serve-head"], "resources": {"gpu": 0}},
        {"name": "workers", "nodes": 2, "resources": {"gpu": "A100:2"},
         "commands": ["join ${{ groups[0].nodes[0].IP_ADDRESS }}:6379"]},
    ],
}  # fmt: skip


def test_one_job_per_node_with_its_groups_fields() -> None:
    specs = build_job_specs("ray", parse_configuration(TASK), None)
    assert [(s.job_num, s.jobs_per_replica) for s in specs] == [(0, 3), (1, 3), (2, 3)]
    assert specs[0].commands[-1] == "serve-head"
    assert specs[0].requirements["resources"]["gpu"]["count"] == {"min": 0, "max": 0}
    assert specs[1].requirements["resources"]["gpu"]["name"] == ["A100"]
    assert all(s.requirements["multinode"] for s in specs)
    assert "sed -n '1p'" in specs[2].commands[-1] and "${{" not in specs[2].commands[-1]


def test_interpolation_bounds_are_checked() -> None:
    bad = {**TASK, "groups": [TASK["groups"][0], {**TASK["groups"][1],
           "commands": ["join ${{ groups[1].nodes[5].IP_ADDRESS }}"]}]}  # fmt: skip
    with pytest.raises(ServerClientError, match="no such node"):
        build_job_specs("ray", parse_configuration(bad), None)
    other = {**TASK, "groups": [{**TASK["groups"][0], "commands": ["x ${{ groups[0].name }}"]}]}
    with pytest.raises(ServerClientError, match="unsupported interpolation"):
        build_job_specs("ray", parse_configuration(other), None)


@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    settings = Settings(
        server_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        admin_token="t-groups", local_backend_enabled=False, inventory_sweep_seconds=3600,
    )  # fmt: skip
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = "Bearer t-groups"
        yield c


def test_plan_for_a_task_with_groups_answers(client: TestClient) -> None:
    spec = {"run_name": "ray", "configuration": TASK}
    answer = client.post("/api/project/main/runs/get_plan", json={"run_spec": spec})
    assert answer.status_code == 200, answer.text
    assert [p["job_spec"]["job_num"] for p in answer.json()["job_plans"]] == [0, 1, 2]
