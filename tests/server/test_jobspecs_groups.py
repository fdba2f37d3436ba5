"""Job specs of a service with replica groups: replicas numbered in group order, each with its
group's own commands, image and resources laid over the service's; a plain service is one
group named "0"."""

from __future__ import annotations

from dstack.models.configurations import parse_configuration
from dstack.server.services.jobspecs import build_job_specs, replica_groups, replica_spec

SERVICE = {
    "type": "service",
    "port": 8000,
    "env": ["SHARED=1"],
    "resources": {"cpu": "2..", "gpu": 0},
    "groups": [
        {"name": "small", "replicas": 2, "commands": ["serve --small"]},
        {"replicas": 1, "image": "vllm/vllm", "commands": ["serve --big"],
         "resources": {"gpu": "A100:2"}},
    ],
}  # fmt: skip


def test_groups_number_replicas_in_order_with_their_own_fields() -> None:
    conf = parse_configuration(SERVICE)
    specs = build_job_specs("svc", conf, None)
    assert [(s.replica_num, s.replica_group, s.job_name) for s in specs] == [
        (0, "small", "svc-0-0"),
        (1, "small", "svc-0-1"),
        (2, "1", "svc-0-2"),
    ]
    small, big = specs[0], specs[2]
    assert small.commands[-1] == "serve --small" and big.commands[-1] == "serve --big"
    assert small.image_name is None and big.image_name == "vllm/vllm"
    assert small.requirements["resources"]["gpu"]["count"] == {"min": 0, "max": 0}
    assert big.requirements["resources"]["gpu"]["name"] == ["A100"]
    assert small.env == big.env == {"SHARED": "1"}
    assert all(s.service_port == 8000 for s in specs)


def test_a_new_replica_takes_the_spec_of_its_number() -> None:
    conf = parse_configuration(SERVICE)
    assert replica_spec("svc", conf, None, 2).commands[-1] == "serve --big"
    assert replica_spec("svc", conf, None, 1).commands[-1] == "serve --small"
    beyond = replica_spec("svc", conf, None, 7)  # a number no group has: the first group's
    assert beyond.commands[-1] == "serve --small" and beyond.job_name == "svc-0-7"


def test_a_plain_service_is_one_group() -> None:
    conf = parse_configuration(
        {"type": "service", "port": 80, "commands": ["x"], "replicas": 3}
    )
    [(name, same, count)] = replica_groups(conf)
    assert (name, same, count) == ("0", conf, 3)
    assert [s.replica_group for s in build_job_specs("p", conf, None)] == ["0", "0", "0"]


def test_a_rolling_replica_joins_the_group_that_lacks_one() -> None:
    conf = parse_configuration(SERVICE)
    # New replicas of a rolling update are numbered past the old ones (3, 4, 5 here).
    assert replica_spec("svc", conf, None, 3, {}).replica_group == "small"
    assert replica_spec("svc", conf, None, 4, {"small": 1}).replica_group == "small"
    js = replica_spec("svc", conf, None, 5, {"small": 2})
    assert (js.replica_group, js.commands[-1], js.job_name) == ("1", "serve --big", "svc-0-5")
    assert replica_spec("svc", conf, None, 6, {"small": 2, "1": 1}).replica_group == "small"
