"""A plan says why it has no offers, before the user is asked to submit; the same backend offer
reached through several fleets is one offer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app_client import TestClient, app_client
from dstack.models.instances import InstanceType, Resources
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.server.scheduler.placement import Candidate
from dstack.server.services.plan_notes import unique_offers

TOKEN = "admin-token-for-plan-notes"


def _offer(name: str, price: float) -> InstanceOfferWithAvailability:
    res = Resources(cpus=2, memory_mib=8192)
    return InstanceOfferWithAvailability(
        backend="aws", instance=InstanceType(name=name, resources=res), region="us-east-1",
        price=price,
    )  # fmt: skip


def test_one_backend_offer_through_two_fleets_is_one_offer() -> None:
    a, b = _offer("t3.large", 0.1), _offer("m5.large", 0.2)
    cands = [Candidate(a, "f1", "one", None, 1), Candidate(a.model_copy(), "f2", "two", None, 1),
             Candidate(b, "f1", "one", None, 1)]  # fmt: skip
    assert [o.instance.name for o in unique_offers(cands)] == ["t3.large", "m5.large"]


def test_two_existing_instances_of_one_type_stay_two() -> None:
    a = _offer("t3.large", 0.1)
    cands = [Candidate(a, "f1", "one", "i-1", 1), Candidate(a, "f1", "one", "i-2", 1)]
    assert len(unique_offers(cands)) == 2


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_client(tmp_path_factory.mktemp("plan-notes"), TOKEN) as c:
        yield c


def _plan(client: TestClient, conf: dict[str, Any]) -> dict[str, Any]:
    spec = {"run_name": "plan-me", "configuration": conf}
    answer = client.post("/api/project/main/runs/get_plan", json={"run_spec": spec})
    assert answer.status_code == 200, answer.text
    return answer.json()["job_plans"][0]


def test_no_offers_names_a_backend_that_is_not_configured(client: TestClient) -> None:
    plan = _plan(client, {"type": "task", "commands": ["x"], "backends": ["aws"]})
    assert plan["offers"] == []
    assert plan["notes"][0].startswith("backend aws is not configured for this project")


def test_no_offers_with_nothing_at_all_says_so(client: TestClient) -> None:
    plan = _plan(client, {"type": "task", "commands": ["x"]})
    assert plan["notes"] == ["no fleet or backend of this project can take runs"]


def test_fields_without_effect_on_an_existing_instance_are_warned() -> None:
    from dstack.models.configurations import parse_configuration
    from dstack.models.offers import InstanceAvailability
    from dstack.server.scheduler.placement import Ranking
    from dstack.server.services.plan_notes import field_warnings

    conf = parse_configuration({"type": "task", "commands": ["x"], "tags": {"team": "ml"}})
    live = _offer("host", 0.0).model_copy(update={"availability": InstanceAvailability.IDLE})
    reuse = Ranking(candidates=[Candidate(live, "f1", "onprem", "i-1", 1)])
    [warning] = field_warnings(conf, reuse)
    assert warning.startswith("`tags` has no effect here: the run goes to the existing instance")
    new = Ranking(
        candidates=[
            Candidate(
                _offer("t3", 0.1).model_copy(
                    update={"availability": InstanceAvailability.AVAILABLE}
                ),
                "f1",
                "c",
                None,
                1,
            )
        ]
    )
    assert field_warnings(conf, new) == []
    plain = parse_configuration({"type": "task", "commands": ["x"]})
    assert field_warnings(plain, reuse) == []
