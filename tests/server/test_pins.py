"""`instances`: a pinned run goes only to the instances its selectors name, never to a new
one; a selector that matches nothing in the project is refused at plan and apply."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from app_client import TestClient, app_client
from dstack.server.scheduler.pins import InstancePin, unmatched
from dstack.server.scheduler.ranking import rank

from .test_scheduler import cap, inst, offer, req


def _pool() -> list[Any]:
    a = dataclasses.replace(inst("a", price=1.0), hostname="10.0.0.1", instance_num=0)
    b = dataclasses.replace(inst("b", price=9.0), hostname="10.0.0.2", instance_num=1)
    return [a, b]


@pytest.mark.parametrize(
    "pin",
    [InstancePin(name="fleet-b"), InstancePin(hostname="10.0.0.2"),
     InstancePin(fleet="fleet", instance=1)],  # fmt: skip
)
def test_pinned_run_goes_only_to_its_instance(pin: InstancePin) -> None:
    ranking = rank(req(instances=(pin,)), _pool(), [cap(offer("new", 0.1))])
    assert [c.instance_id for c in ranking.candidates] == ["b"]
    assert "fleet-a: not one of the run's `instances`" in ranking.rejections


def test_unpinned_run_may_go_anywhere_and_to_new_capacity() -> None:
    ranking = rank(req(), _pool(), [cap(offer("new", 0.1))])
    assert {c.instance_id for c in ranking.candidates} == {"a", "b", None}


def test_pinned_to_a_busy_instance_waits_rather_than_provisions() -> None:
    pool = [dataclasses.replace(_pool()[1], status="busy", busy_blocks=1)]
    ranking = rank(req(instances=(InstancePin(name="fleet-b"),)), pool, [cap(offer("new"))])
    assert ranking.best is None or ranking.best.instance_id == "b"
    assert all(c.instance_id == "b" for c in ranking.candidates)


def test_unmatched_selectors_are_named() -> None:
    pins = (InstancePin(name="fleet-a"), InstancePin(name="nope"), InstancePin(hostname="h"))
    assert unmatched(pins, _pool()) == ["nope", "hostname h"]


TOKEN = "admin-token-for-pins"


@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    with app_client(tmp_path, TOKEN) as c:
        yield c


def test_unknown_instance_is_refused_at_plan_and_apply(client: TestClient) -> None:
    conf = {"type": "task", "commands": ["x"], "instances": ["does-not-exist"]}
    spec = {"run_name": "pinned", "configuration": conf}
    plan = client.post("/api/project/main/runs/get_plan", json={"run_spec": spec})
    assert plan.status_code == 400
    detail = plan.json()["detail"][0]
    assert detail["field"] == "run_spec.configuration.instances"
    assert "no instance matches does-not-exist" in detail["msg"]
    applied = client.post("/api/project/main/runs/apply",
                          json={"plan": {"run_spec": spec}, "force": False})  # fmt: skip
    assert applied.status_code == 400 and "does-not-exist" in applied.text
