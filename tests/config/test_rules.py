"""Cross-field rules of every configuration type, each with the error text it produces."""

from __future__ import annotations

import pytest

from dstack.models.configurations import (
    FleetConfiguration,
    GatewayConfiguration,
    ServiceConfiguration,
    TaskConfiguration,
    VolumeConfiguration,
    parse_configuration,
)

from .helpers import dev, error_of, service, task


def fleet(**fields):
    return {"type": "fleet", "name": "f", **fields}


def ssh(**fields):
    return fleet(ssh_config={"user": "ubuntu", "identity_file": "~/.ssh/k", **fields})


def volume(**fields):
    return {"type": "volume", "name": "v", "backend": "aws", "region": "us-east-1", **fields}


def gateway(**fields):
    return {"type": "gateway", "name": "g", "backend": "aws", "region": "us-east-1", **fields}


def svc_groups(groups, **fields):
    base = {"type": "service", "port": 8000, "groups": groups}
    return {**base, **fields}


G = {"commands": ["serve"]}

INVALID = [
    # --- general
    ({"name": "x"}, "type: `type` is required"),
    ({"type": "job"}, "type: unknown configuration type 'job'"),
    ({"type": 5}, "type: unknown configuration type '5'"),
    ({"type": "preset"}, "type: `preset` configurations are not supported"),
    ([], "configuration must be a mapping"),
    (task(foo=1), "foo: Extra inputs are not permitted"),
    (task(resources={"gpus": 1}), "resources.gpus: Extra inputs are not permitted"),
    # --- common run rules (§4)
    (task(image="x", python="3.12"), "python: `image` and `python` are mutually exclusive"),
    (task(docker=True, image="x"), "docker: `docker` and `image` are mutually exclusive"),
    (task(docker=True, python="3.11"), "docker: `docker` and `python` are mutually exclusive"),
    (task(docker=True, nvcc=True), "docker: `docker` and `nvcc` are mutually exclusive"),
    (task(priority=101), "priority: Input should be less than or equal to 100"),
    (task(priority=-1), "priority: Input should be greater than or equal to 0"),
    (task(registry_auth={"username": "u"}), "registry_auth.password: Field required"),
    # --- task (§7)
    ({"type": "task"}, "commands: either `commands` or `image` must be set"),
    (task(nodes=0), "nodes: Input should be greater than or equal to 1"),
    (task(commands=[], nodes=2, groups=[G]), "groups: `nodes` and `groups` are mutually exclusive"),
    (task(commands=[], groups=[]), "groups: groups must not be empty"),
    (task(groups=[G]), "commands: top-level `commands` is not allowed with `groups`"),
    (task(commands=[], ports=[80], groups=[G]), "ports: top-level `ports` is not allowed"),
    (
        task(commands=[], entrypoint="x", groups=[G]),
        "entrypoint: top-level `entrypoint` is not allowed",
    ),
    (
        task(commands=[], groups=[G, {"nodes": 2}]),
        "groups[1].commands: each group needs `commands` unless the task sets `image`",
    ),
    (
        task(commands=[], groups=[{"name": "a", **G}, {"name": "a", **G}]),
        "groups[1].name: duplicate group name 'a'",
    ),
    (task(commands=[], groups=[{"name": "Head", **G}]), "groups[0].name: invalid group name"),
    (task(commands=[], groups=[{"nodes": 0, **G}]), "groups[0].nodes: Input should be greater"),
    # --- dev environment (§6)
    (dev(entrypoint="x"), "entrypoint: entrypoint is not supported for dev environments"),
    (dev(version="1.90"), "version: `version` requires `ide`"),
    (dev(ide="windsurf", version="1.2"), "version: windsurf version must be `version@commit`"),
    (dev(ide="emacs"), "ide: Input should be 'vscode', 'cursor', 'windsurf' or 'zed'"),
    (
        dev(dstack=True, inactivity_duration="1h"),
        "inactivity_duration: `inactivity_duration` is not allowed with `dstack: true`",
    ),
    (dev(commands=["x"]), "commands: Extra inputs are not permitted"),
    # --- service (§12)
    ({"type": "service", "commands": ["x"]}, "port: Field required"),
    (service(image="x", commands=[]) | {"port": 0}, "port: port must be between 1 and 65535"),
    ({"type": "service", "port": 80}, "commands: either `commands` or `image` must be set"),
    (service(replicas="0..3"), "scaling: `scaling` is required when `replicas` is a range"),
    (
        service(replicas=2, scaling={"metric": "rps", "target": 1}),
        "scaling: `scaling` requires `replicas` to be a range (e.g. `replicas: 1..4`)",
    ),
    (service(replicas="1.."), "replicas: replicas must have an upper bound (e.g. 0..4)"),
    (service(replicas="3..1"), "replicas: Invalid range order"),
    (
        service(replicas="0..2", scaling={"metric": "rps", "target": 1, "window": "45s"}),
        "scaling.window: window must be one of 30s, 60s, 300s",
    ),
    (
        service(replicas="0..2", scaling={"metric": "rps", "target": 0}),
        "scaling.target: Input should be greater than 0",
    ),
    (
        service(replicas="0..2", scaling={"metric": "cpu", "target": 1}),
        "scaling.metric: Input should be 'rps'",
    ),
    (service(https="sometimes"), "https"),
    (service(auth="maybe"), "auth: Input should be a valid boolean"),
    (service(gateway="a/b/c"), "gateway: invalid reference 'a/b/c'"),
    (
        service(rate_limits=[{"prefix": "/v1", "rps": 1}, {"prefix": "/v1", "rps": 2}]),
        "rate_limits[1].prefix: duplicate rate limit prefix '/v1'",
    ),
    (service(rate_limits=[{"rps": 0.001}]), "rate_limits[0].rps: Input should be greater"),
    (service(rate_limits=[{"rps": 1, "prefix": "v1"}]), "prefix must start with /"),
    (service(rate_limits=[{"rps": 1, "burst": -1}]), "rate_limits[0].burst"),
    (
        service(rate_limits=[{"rps": 1, "key": {"type": "header"}}]),
        "rate_limits[0].key.header: `header` is required for key type header",
    ),
    (service(probes=[{"url": "/"}]), "probes[0].type: Field required"),
    (service(probes=[{"type": "tcp"}]), "probes[0].type: Input should be 'http'"),
    (service(probes=[{"type": "http", "url": "health"}]), "url must start with /"),
    (
        service(probes=[{"type": "http", "body": "{}"}]),
        "probes[0].body: body is not allowed with method get",
    ),
    (
        service(probes=[{"type": "http", "method": "head", "body": "x"}]),
        "body is not allowed with method head",
    ),
    (service(probes=[{"type": "http", "method": "post", "body": ""}]), "probes[0].body"),
    (service(probes=[{"type": "http", "timeout": 0}]), "probes[0].timeout: must be at least 1s"),
    (service(probes=[{"type": "http", "interval": "0s"}]), "probes[0].interval: must be at least"),
    (service(probes=[{"type": "http", "ready_after": 0}]), "probes[0].ready_after"),
    (
        service(probes=[{"type": "http", "headers": [{"name": "a", "value": "b"}] * 17}]),
        "probes[0].headers: List should have at most 16 items",
    ),
    (service(probes=[{"type": "http"}, {"type": "http"}]), "probes: probes must be unique"),
    (service(model={"name": "m", "format": "vllm"}), "model.format: Input should be 'openai'"),
    (service(model={"format": "tgi"}), "model.name: Field required"),
    # --- service replica groups
    (svc_groups([G], replicas=2), "groups: `replicas` and `groups` are mutually exclusive"),
    (svc_groups([G], commands=["x"]), "commands: top-level `commands` is not allowed with"),
    (
        svc_groups([G], scaling={"metric": "rps", "target": 1}),
        "scaling: top-level `scaling` is not allowed with `groups`",
    ),
    (svc_groups([]), "groups: groups must not be empty"),
    (
        svc_groups([{"replicas": 1}]),
        "groups[0].commands: each group needs `commands` or an `image`",
    ),
    (
        svc_groups([{"image": "a", **G}], image="b"),
        "groups[0].image: `image` may be set on the service or in groups, not both",
    ),
    (
        svc_groups([{"spot_policy": "spot", **G}], spot_policy="auto"),
        "groups[0].spot_policy: `spot_policy` may be set on the service or in groups",
    ),
    (svc_groups([{"python": "3.12", **G}], image="x"), "groups[0]: group uses the default image"),
    (svc_groups([{"docker": True, **G}], python="3.12"), "groups[0]: group uses `docker`"),
    (svc_groups([{"replicas": "0..2", **G}]), "groups[0].scaling: `scaling` is required"),
    (
        svc_groups([{"replicas": 2, "scaling": {"metric": "rps", "target": 1}, **G}]),
        "groups[0].scaling: `scaling` requires `replicas` to be a range (e.g. `replicas: 1..4`)",
    ),
    (svc_groups([{"replicas": "2..", **G}]), "groups[0].replicas: replicas must have an upper"),
    (
        svc_groups([{"docker": True, "privileged": False, **G}]),
        "groups[0].privileged: `privileged: false` is not allowed with docker",
    ),
    (
        svc_groups([{"replicas": 2, "router": {"type": "smg"}, **G}]),
        "groups[0].replicas: a group with a router must have `replicas: 1`",
    ),
    (
        svc_groups([{"router": {}, **G}, {"router": {"type": "dynamo"}, **G}]),
        "groups: at most one group may have a `router`",
    ),
    (svc_groups([{"router": {"type": "nginx"}, **G}]), "groups[0].router.type: Input should be"),
    (
        svc_groups([{"name": "a", **G}, {"name": "a", **G}]),
        "groups[1].name: duplicate group name 'a'",
    ),
    (svc_groups([{"count": 1, "replicas": 1, **G}]), "`count` is an alias of `replicas`"),
    (
        service(replicas=[G], groups=[G]),
        "`replicas` (as a list) and `groups` are mutually exclusive",
    ),
    # --- profile parameters (§5)
    (task(retry={"on_events": []}), "retry.on_events: on_events must not be empty"),
    (task(retry={"on_events": ["oom"]}), "retry.on_events[0]: Input should be 'no-capacity'"),
    (task(retry={"duration": "1y"}), "retry.duration: invalid duration '1y'"),
    (task(retry="yes"), "retry"),
    (
        task(utilization_policy={"min_gpu_utilization": 10, "time_window": "1m"}),
        "utilization_policy.time_window: time_window must be at least 5m",
    ),
    (
        task(utilization_policy={"min_gpu_utilization": 101, "time_window": "1h"}),
        "utilization_policy.min_gpu_utilization: Input should be less than or equal to 100",
    ),
    (task(schedule={"cron": []}), "schedule.cron: cron must not be empty"),
    (task(schedule={"cron": "61 * * * *"}), "schedule.cron: invalid cron expression '61 * * * *'"),
    (task(schedule={"cron": "* * * * * *"}), "invalid cron expression '* * * * * *'"),
    (task(schedule={"cron": "every day"}), "invalid cron expression 'every day'"),
    (task(schedule={"at": "noon"}), "schedule.at: Extra inputs are not permitted"),
    (task(schedule={}), "schedule.cron: Field required"),
    (task(spot_policy="cheap"), "spot_policy: Input should be 'spot', 'on-demand' or 'auto'"),
    (task(creation_policy="create"), "creation_policy: Input should be 'reuse'"),
    (task(startup_order="random"), "startup_order: Input should be 'any'"),
    (task(stop_criteria="any-done"), "stop_criteria: Input should be 'all-done' or 'master-done'"),
    (task(backends=["aws", "ibm"]), "backends[1]: Input should be"),
    (task(max_price=0), "max_price: Input should be greater than 0"),
    (task(instances=[]), "instances: instances must not be empty"),
    (task(instances=[{"fleet": "f"}]), "`fleet` and `instance` must be given together"),
    (task(instances=[{"name": "a", "hostname": "b"}]), "takes exactly one of `name`"),
    (task(instances=[{"fleet": "f", "instance": -1}]), "instances[0].instance: Input should be"),
    (task(fleets=["a/b/c"]), "fleets[0]: invalid reference 'a/b/c'"),
    (task(fleets=["/b"]), "fleets[0]: invalid reference '/b'"),
    (
        task(backend_options=[{"type": "vastai"}, {"type": "vastai"}]),
        "backend_options: backend_options lists type 'vastai' more than once",
    ),
    (
        task(backend_options=[{"type": "vastai", "min_reliability": 2}]),
        "backend_options[0].min_reliability: Input should be less than or equal to 1",
    ),
    (task(backend_options=[{"type": "aws"}]), "backend_options[0].type: Input should be 'vastai'"),
    # --- fleet (§13)
    (fleet(), "either `nodes` or `ssh_config` must be set"),
    (
        fleet(nodes=2, ssh_config={"hosts": ["h"]}),
        "ssh_config: `nodes` and `ssh_config` are mutually exclusive",
    ),
    (fleet(nodes="4..2"), "nodes.min: Invalid range order"),
    (fleet(nodes={"min": 2, "target": 1, "max": 4}), "nodes.target: nodes.target must not be less"),
    (fleet(nodes={"min": 0, "target": 5, "max": 4}), "nodes.max: nodes.max must not be less"),
    (fleet(nodes=-1), "nodes.min: Input should be greater than or equal to 0"),
    (fleet(nodes=".."), "nodes: Invalid empty range"),
    (fleet(nodes=2, blocks=0), "blocks: blocks must be at least 1"),
    (fleet(nodes=2, blocks="many"), "blocks: blocks must be a positive integer or `auto`"),
    (fleet(nodes=2, placement="spread"), "placement: Input should be 'any' or 'cluster'"),
    (ssh(hosts=[]), "ssh_config.hosts: List should have at least 1 item"),
    (ssh(hosts=[{"port": 22}]), "ssh_config.hosts[0].hostname: Field required"),
    (ssh(hosts=[{"hostname": "h", "blocks": 0}]), "ssh_config.hosts[0].blocks: blocks must be"),
    (ssh(hosts=["h"], network="8.8.8.0/24"), "ssh_config.network: network must be private"),
    (ssh(hosts=["h"], network="10.0.0.1"), "ssh_config.network: invalid network '10.0.0.1'"),
    (ssh(hosts=["h"], network="not-a-net/8"), "invalid network 'not-a-net/8'"),
    (
        ssh(hosts=[{"hostname": "a", "internal_ip": "8.8.8.8"}]),
        "ssh_config.hosts[0].internal_ip: internal_ip must be a private address",
    ),
    (
        ssh(hosts=[{"hostname": "a", "internal_ip": "10.0.0.1"}, "b"]),
        "ssh_config.hosts: internal_ip must be set for all hosts or for none",
    ),
    (
        ssh(hosts=[{"hostname": "a", "internal_ip": "10.0.0.1"}], network="10.0.0.0/24"),
        "ssh_config.network: network and internal_ip are mutually exclusive",
    ),
    (
        ssh(hosts=["h"], proxy_jump={"hostname": "b", "user": "u"}),
        "ssh_config.proxy_jump.identity_file: Field required",
    ),
    (ssh(hosts=["h"], port=70000), "ssh_config.port: Input should be less than or equal to 65535"),
    (fleet(nodes=1, ssh_config=None, hosts=["h"]), "hosts: Extra inputs are not permitted"),
    # --- volume (§14)
    ({"type": "volume", "name": "v", "region": "r"}, "backend: Field required"),
    (volume(backend="azure"), "backend: Input should be 'aws', 'gcp', 'runpod'"),
    (volume(region=None), "region: Field required"),
    (volume(claim_name="pvc"), "claim_name: Extra inputs are not permitted (backend aws)"),
    (volume(size="10XB"), "size: unknown memory unit 'XB' in '10XB'"),
    (volume(auto_cleanup_duration="soon"), "auto_cleanup_duration: invalid duration 'soon'"),
    (
        {"type": "volume", "backend": "daytona", "region": "x"},
        "region: Extra inputs are not permitted (backend daytona)",
    ),
    # --- gateway (§15)
    ({"type": "gateway", "backend": "aws"}, "region: Field required"),
    (gateway(backend="runpod"), "backend: gateways are not supported by backend runpod"),
    (gateway(replicas=0), "replicas: Input should be greater than or equal to 1"),
    (gateway(public_ip=False), "certificate: lets-encrypt certificates require `public_ip: true`"),
    (gateway(replicas=2), "certificate: lets-encrypt certificates require `replicas: 1`"),
    (
        gateway(backend="gcp", certificate={"type": "acm", "arn": "a"}),
        "certificate: acm certificates are only supported on aws",
    ),
    (
        gateway(certificate={"type": "gcp-cm", "name": "c"}),
        "certificate: gcp-cm certificates are only supported on gcp",
    ),
    (
        gateway(backend="gcp", certificate={"type": "gcp-cm", "name": "c"}),
        "load_balancer: gcp-cm certificates require `load_balancer`",
    ),
    (
        gateway(load_balancer={"type": "alb"}),
        "certificate: an aws load balancer needs an acm certificate or null",
    ),
    (
        gateway(backend="gcp", load_balancer={"type": "alb"}),
        "certificate: a gcp load balancer needs a gcp-cm certificate or null",
    ),
    (
        gateway(backend="azure", load_balancer={"type": "alb"}, certificate=None),
        "load_balancer: load_balancer is not supported by azure",
    ),
    (
        gateway(backend="kubernetes", public_ip=False, certificate=None),
        "public_ip: private gateways are not supported by kubernetes",
    ),
    (gateway(load_balancer={"type": "nlb"}), "load_balancer.type: Input should be 'alb'"),
    (gateway(certificate={"type": "self-signed"}), "certificate: certificate type must be one of"),
    (gateway(certificate={"type": "acm"}), "certificate.arn: Field required"),
]


@pytest.mark.parametrize(("data", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid(data, message):
    assert message in error_of(data)


# --- valid forms and their normalised values ---------------------------------------------------


def test_task_defaults():
    conf = parse_configuration(task())
    assert isinstance(conf, TaskConfiguration)
    assert (conf.nodes, conf.groups, conf.env, conf.ports, conf.volumes) == (1, None, {}, [], [])
    assert (conf.retry, conf.priority, conf.privileged, conf.home_dir) == (
        None,
        None,
        False,
        "/root",
    )


def test_task_image_without_commands():
    assert parse_configuration({"type": "task", "image": "alpine"}).commands == []


def test_task_groups_get_index_names():
    conf = parse_configuration(task(commands=[], groups=[G, {"name": "w", "nodes": 3, **G}]))
    assert [g.name for g in conf.groups] == ["0", "w"]
    assert conf.total_nodes == 4
    assert conf.groups[0].resources.cpu.count.min == 2


def test_task_groups_may_rely_on_task_image():
    conf = parse_configuration({"type": "task", "image": "x", "groups": [{"nodes": 2}]})
    assert conf.groups[0].commands is None


def test_retry_forms():
    assert parse_configuration(task(retry=False)).retry is None
    retry = parse_configuration(task(retry=True)).retry
    assert retry.model_dump() == {
        "on_events": ["no-capacity", "interruption", "error"],
        "duration": 3600,
    }
    retry = parse_configuration(task(retry={"on_events": ["error"], "duration": "2h"})).retry
    assert (retry.on_events, retry.duration) == (["error"], 7200)


def test_schedule_forms():
    assert parse_configuration(task(schedule={"cron": "0 8 * * mon-fri"})).schedule.cron == [
        "0 8 * * mon-fri"
    ]
    conf = parse_configuration(task(schedule={"cron": ["*/15 * * * *", "0 0 1 jan *"]}))
    assert len(conf.schedule.cron) == 2


def test_instances_selectors():
    conf = parse_configuration(
        task(instances=["box-1", {"hostname": "10.0.0.5"}, {"fleet": "f", "instance": 0}])
    )
    assert [i.model_dump(exclude_none=True) for i in conf.instances] == [
        {"name": "box-1"},
        {"hostname": "10.0.0.5"},
        {"fleet": "f", "instance": 0},
    ]


def test_profile_parameters_on_runs():
    conf = parse_configuration(
        task(
            backends=["aws", "runpod"],
            regions=["us-east-1"],
            availability_zones=["us-east-1a"],
            instance_types=["p5.48xlarge"],
            reservation="cr-123",
            spot_policy="auto",
            max_price=2.5,
            creation_policy="reuse",
            startup_order="workers-first",
            stop_criteria="master-done",
            fleets=["gpu-pool", "team/shared", {"project": "p", "name": "f"}],
            priority=50,
            tags={"team": "ml"},
            backend_options=[{"type": "vastai", "offer_order": "price"}],
        )
    )
    assert conf.fleets == ["gpu-pool", "team/shared", "p/f"]
    assert conf.backend_options[0].min_reliability == 0.9
    assert (conf.priority, conf.max_price, conf.spot_policy) == (50, 2.5, "auto")


def test_dev_environment_valid():
    conf = parse_configuration(
        dev(ide="windsurf", version="1.2.3@abc123", inactivity_duration="2h", ports=["*:8888"])
    )
    assert conf.inactivity_duration == 7200
    assert conf.ports[0].local_port is None
    assert parse_configuration(dev(dstack=True)).dstack is True


def test_service_defaults_and_normalisation():
    conf = parse_configuration(service(port="8080:80"))
    assert isinstance(conf, ServiceConfiguration)
    assert (conf.port.container_port, conf.auth, conf.strip_prefix) == (80, True, True)
    assert (conf.replicas.min, conf.replicas.max) == (1, 1)
    assert (conf.https, conf.gateway, conf.probes, conf.rate_limits) == (None, None, None, [])


def test_service_replicas_and_scaling():
    conf = parse_configuration(service(replicas="..4", scaling={"metric": "rps", "target": 2}))
    assert (conf.replicas.min, conf.replicas.max) == (0, 4)
    assert conf.scaling.model_dump() == {
        "metric": "rps",
        "target": 2.0,
        "window": 60,
        "scale_up_delay": 300,
        "scale_down_delay": 600,
    }


def test_service_model_forms():
    assert parse_configuration(service(model="meta/llama")).model.model_dump() == {
        "type": "chat",
        "name": "meta/llama",
        "format": "openai",
        "prefix": "/v1",
    }
    tgi = parse_configuration(service(model={"format": "tgi", "name": "m", "eos_token": "</s>"}))
    assert (tgi.model.format, tgi.model.eos_token) == ("tgi", "</s>")


def test_service_gateway_https_and_probes():
    conf = parse_configuration(
        service(gateway="team/gw", https="auto", probes=[{"type": "http", "method": "POST",
                                                          "url": "/v1/ping", "body": "{}"}])
    )  # fmt: skip
    assert (conf.gateway, conf.https) == ("team/gw", "auto")
    probe = conf.probes[0]
    assert (probe.method, probe.timeout, probe.interval, probe.ready_after) == ("post", 10, 15, 1)
    assert parse_configuration(service(gateway=False, https=True)).gateway is False
    assert parse_configuration(service(probes=[])).probes == []


def test_service_rate_limit_defaults():
    limit = parse_configuration(service(rate_limits=[{"rps": 0.5}])).rate_limits[0]
    assert limit.model_dump() == {
        "prefix": "/",
        "rps": 0.5,
        "burst": 0,
        "key": {"type": "ip_address", "header": None},
    }


def test_service_groups_and_legacy_replicas_list():
    groups = [{"name": "r", "router": {"type": "sglang"}, **G}, {"count": "0..2", **G,
              "scaling": {"metric": "rps", "target": 1}}]  # fmt: skip
    for conf in (
        parse_configuration(svc_groups(groups)),
        parse_configuration({"type": "service", "port": 8000, "replicas": groups}),
    ):
        assert [g.name for g in conf.groups] == ["r", "1"]
        assert conf.groups[0].router.type == "smg"
        assert (conf.groups[1].replicas.min, conf.groups[1].replicas.max) == (0, 2)


def test_service_groups_image_at_service_level():
    conf = parse_configuration(svc_groups([{"replicas": 2}], image="nginx"))
    assert conf.groups[0].commands is None


def test_fleet_nodes_forms():
    def nodes(value):
        return parse_configuration(fleet(nodes=value)).nodes.model_dump()

    assert nodes(2) == {"min": 2, "target": 2, "max": 2}
    assert nodes("0..4") == {"min": 0, "target": 0, "max": 4}
    assert nodes("2..") == {"min": 2, "target": 2, "max": None}
    assert nodes("..3") == {"min": 0, "target": 0, "max": 3}
    assert nodes({"min": 1, "max": 3}) == {"min": 1, "target": 1, "max": 3}
    assert nodes({"max": 3}) == {"min": 0, "target": 0, "max": 3}
    assert nodes({"min": 0, "target": 2, "max": 4}) == {"min": 0, "target": 2, "max": 4}


def test_fleet_defaults():
    conf = parse_configuration(fleet(nodes=1))
    assert isinstance(conf, FleetConfiguration)
    assert (conf.placement, conf.blocks, conf.ssh_config, conf.env) == ("any", 1, None, {})
    assert conf.idle_duration is None and not conf.is_ssh


def test_ssh_fleet_hosts_normalised():
    conf = parse_configuration(
        ssh(
            port=2222,
            hosts=["10.0.0.1", {"hostname": "10.0.0.2", "user": "ops", "blocks": "auto"}],
            network="10.0.0.0/24",
        )
        | {"env": ["HTTPS_PROXY=http://proxy:3128"], "blocks": "auto", "placement": "cluster"}
    )
    assert conf.is_ssh and conf.blocks == "auto"
    hosts = [h.model_dump(exclude_defaults=True) for h in conf.ssh_config.hosts]
    assert hosts == [{"hostname": "10.0.0.1"}, {"hostname": "10.0.0.2", "user": "ops",
                                                 "blocks": "auto"}]  # fmt: skip
    assert conf.ssh_config.port == 2222
    assert conf.env == {"HTTPS_PROXY": "http://proxy:3128"}


def test_ssh_fleet_internal_ips_for_all_hosts():
    conf = parse_configuration(
        ssh(hosts=[{"hostname": "a", "internal_ip": "10.0.0.1"},
                   {"hostname": "b", "internal_ip": "10.0.0.2"}])
    )  # fmt: skip
    assert [h.internal_ip for h in conf.ssh_config.hosts] == ["10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"size": None, "region": "us-east-1"}),
        ({"size": "500GB", "auto_cleanup_duration": "7d"}, {"size": 500.0,
                                                            "auto_cleanup_duration": 604800}),
        ({"auto_cleanup_duration": "off"}, {"auto_cleanup_duration": -1}),
        ({"volume_id": "vol-123", "availability_zone": "us-east-1a"}, {"volume_id": "vol-123"}),
    ],
)  # fmt: skip
def test_volume_valid(fields, expected):
    conf = parse_configuration(volume(**fields))
    assert isinstance(conf, VolumeConfiguration)
    dumped = conf.model_dump()
    assert {k: dumped[k] for k in expected} == expected


def test_volume_backends():
    k8s = parse_configuration({"type": "volume", "backend": "kubernetes", "size": "10GB",
                               "claim_name": "pvc"})  # fmt: skip
    assert (k8s.region, k8s.access_modes, k8s.read_only) == ("", ["ReadWriteOnce"], False)
    assert parse_configuration({"type": "volume", "backend": "lium", "volume_id": "x"}).volume_id
    runpod = parse_configuration({"type": "volume", "backend": "runpod", "region": "EU-RO-1"})
    assert runpod.region == "EU-RO-1"


def test_gateway_defaults_and_certificates():
    conf = parse_configuration(gateway())
    assert isinstance(conf, GatewayConfiguration)
    assert conf.certificate.type == "lets-encrypt"
    assert (conf.public_ip, conf.replicas, conf.default) == (True, 1, False)
    assert parse_configuration(gateway(certificate=None)).certificate is None
    private = parse_configuration(gateway(public_ip=False, certificate=None, replicas=3))
    assert private.replicas == 3
    gcp = parse_configuration(
        gateway(backend="gcp", load_balancer={"type": "alb"},
                certificate={"type": "gcp-cm", "name": "cert"})
    )  # fmt: skip
    assert gcp.certificate.name == "cert"
    acm = parse_configuration(gateway(certificate={"type": "acm", "arn": "arn:x"}))
    assert acm.load_balancer is None


def test_exclusivity_is_judged_by_value():
    """`nodes: 1` / `replicas: 1` are the defaults, so they do not clash with `groups`."""
    conf = parse_configuration(task(commands=[], nodes=1, groups=[G]))
    assert conf.nodes == 1
    conf = parse_configuration(svc_groups([G], replicas=1, privileged=False))
    assert conf.groups[0].name == "0"


def test_secret_references():
    from dstack.models.envs import secret_references

    assert secret_references("a ${{ secrets.hf_token }} b ${{secrets.X}} $${{ secrets.no }}") == [
        "hf_token",
        "X",
    ]
