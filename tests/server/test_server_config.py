"""`~/.dstack/server/config.yml`: every error names the file and line, and the registry of
backends each project sees (a project's cloud backend is its own; server-wide ones are in every
view). No I/O beyond a temporary file; the server-level behaviour is in
test_server_config_app.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dstack.errors import ConfigurationError
from dstack.models.backends import AWSBackendConfig
from dstack.server.backends import configure_projects
from dstack.server.backends import registry as reg
from dstack.server.backends.base import BackendError, Capabilities, OfferCache
from dstack.server.backends.local import LocalBackend
from dstack.server.backends.registry import BackendRegistry
from dstack.server.server_config import load_server_config
from dstack.server.services.pool import PoolRows, with_capacity

from .test_backend_seam import Counting
from .test_scheduler import offer


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return load_server_config(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        _load(tmp_path, text)
    return str(info.value)


AWS = """\
projects:
- name: main
  backends:
  - type: aws
    creds:
      type: access_key
      access_key: AKIAEXAMPLE
      secret_key: s3cr3t
    regions: [us-east-1, us-west-2]
    vpc_ids: {us-east-1: vpc-1, us-west-2: vpc-2}
    public_ips: false
    tags: {team: ml}
    os_images:
      nvidia: {name: my-ami, owner: "123456789012", user: ubuntu}
"""


def test_the_originals_format_is_read(tmp_path: Path) -> None:
    conf = _load(tmp_path, AWS)
    (project,) = conf.projects
    (aws,) = project.backends
    assert project.name == "main" and aws.type == "aws"
    assert aws.creds.secret_key == "s3cr3t" and aws.regions == ["us-east-1", "us-west-2"]
    assert aws.public_ips is False and aws.tags == {"team": "ml"}
    assert aws.os_images.nvidia.owner == "123456789012"
    assert aws.uses_default_vpcs() is False


def test_a_missing_or_empty_file_configures_no_backends(tmp_path: Path) -> None:
    assert load_server_config(tmp_path / "absent.yml").projects == []
    assert _load(tmp_path, "").projects == []
    assert _load(tmp_path, "projects:\n- name: team-a\n").projects[0].backends == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "projects:\n- name: main\n  backends:\n  - type: aws\n  - type: gcp\n",
            ":5: projects[0].backends[1].type: backend type gcp is not supported by this server "
            "yet (supported: aws, slurm)",
        ),
        (
            "projects:\n- name: main\n  backends:\n  - type: nosuch\n",
            ":4: projects[0].backends[0].type: unknown backend type 'nosuch' "
            "(supported: aws, slurm)",
        ),
        (
            "projects:\n- name: a\n- name: b\n- name: a\n",
            ":4: projects[2].name: duplicate project name a",
        ),
        (
            "projects:\n- name: a\n  backends:\n  - type: aws\n  - type: aws\n",
            ":5: projects[0].backends[1].type: duplicate backend type aws in this project",
        ),
        ("projects:\n- name: 'no spaces'\n", ":2: projects[0].name: Invalid project name"),
        (
            "projects:\n- name: a\n  backends:\n  - type: aws\n    regions: [mars-1]\n",
            ":5: projects[0].backends[0].regions: 'mars-1' is not an AWS region name",
        ),
        (
            "projects:\n- name: a\n  backends:\n  - type: aws\n"
            "    vpc_name: v\n    vpc_ids: {us-east-1: x}\n",
            ":4: projects[0].backends[0]",
        ),
        (
            "projects:\n- name: a\n  backends:\n  - type: aws\n    colour: blue\n",
            ":5: projects[0].backends[0].colour: Extra inputs are not permitted",
        ),
        ("projects: [\n", ":2: invalid YAML"),
        ("servers: []\n", ":1: servers: Extra inputs are not permitted"),
    ],
)
def test_errors_name_the_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    message = _error(tmp_path, text)
    assert message.startswith(str(tmp_path / "config.yml") + expected), message


def test_an_error_never_shows_the_secret(tmp_path: Path) -> None:
    bad = AWS.replace("regions: [us-east-1, us-west-2]", "regions: [nowhere]")
    assert "s3cr3t" not in _error(tmp_path, bad)


# -- the registry -----------------------------------------------------------------------------


class Cloud(Counting):
    """A test double of a cloud backend: `check()` fails or hangs on demand."""

    type = "aws"

    def __init__(self, project: str, check: str = "ok") -> None:
        super().__init__()
        self.project = project
        self.check_mode = check
        self.closed = False

    async def check(self) -> None:
        if self.check_mode == "fail":
            raise BackendError("AuthFailure: AWS was not able to validate the credentials")
        if self.check_mode == "hang":
            await asyncio.sleep(30)

    async def offers(self, requirements: Any) -> list[Any]:
        self.calls += 1
        return [offer(backend=self.type, price=1.0 if self.project == "a" else 2.0)]

    async def close(self) -> None:
        self.closed = True


def _registry(tmp_path: Path, checks: dict[str, str], timeout: float = 5.0) -> BackendRegistry:
    made: dict[str, Cloud] = {}

    def factory(project_name: str, config: Any) -> Cloud:
        made[project_name] = Cloud(project_name, checks.get(project_name, "ok"))
        return made[project_name]

    registry = BackendRegistry(
        shared=[LocalBackend(tmp_path, "a"), Counting(creates_instances=False)]
    )
    conf = AWSBackendConfig(regions=["us-east-1"])
    specs = [(f"id-{p}", p, conf) for p in checks]
    asyncio.run(reg.configure(registry, _specs(specs), lambda _t: factory, timeout))
    registry.made = made  # type: ignore[attr-defined]
    return registry


def _specs(items: list[tuple[str, str, Any]]) -> list[reg.BackendSpec]:
    return [reg.BackendSpec(pid, name, c.type, c, "us-east-1") for pid, name, c in items]


def test_a_projects_backend_is_in_its_view_only(tmp_path: Path) -> None:
    r = _registry(tmp_path, {"a": "ok", "b": "ok"})
    a, b = r.get("aws", "id-a"), r.get("aws", "id-b")
    assert a is not None and b is not None and a is not b
    assert r.get("aws", "id-other") is None
    assert r.types_for("id-a") == ["aws", "fake", "local"]
    assert r.types_for("id-other") == ["fake", "local"]  # server-wide ones are everywhere
    assert set(r.for_project("id-b")) == {"aws", "fake", "local"}
    assert len(r.all()) == 4
    # A project's backend serves that project only, whatever it says itself.
    assert a.serves("a") and not a.serves("b")
    assert r.describe() == [
        "Backends: local (project a); fake (all projects); aws (project a: us-east-1); "
        "aws (project b: us-east-1)"
    ]


def test_a_failing_or_silent_check_leaves_the_backend_out_with_its_reason(tmp_path: Path) -> None:
    r = _registry(tmp_path, {"a": "ok", "bad": "fail", "slow": "hang"}, timeout=0.05)
    assert r.get("aws", "id-a") is not None
    assert r.get("aws", "id-bad") is None and r.get("aws", "id-slow") is None
    assert r.failure("aws", "id-bad").reason.startswith("AuthFailure")  # type: ignore[union-attr]
    assert "did not answer within 0.05 s" in r.failure("aws", "id-slow").reason  # type: ignore[union-attr]
    assert r.made["bad"].closed and r.made["slow"].closed  # type: ignore[attr-defined]
    lines = r.describe()
    assert "Backend aws (project bad): not configured: AuthFailure" in lines[1]
    assert "Backend aws (project slow): not configured: the backend's check" in lines[2]


def test_a_factory_that_raises_is_a_failure_not_a_crash(tmp_path: Path, monkeypatch: Any) -> None:
    from dstack.server import backends

    def broken() -> Any:
        raise ImportError("No module named 'boto3'")

    monkeypatch.setitem(backends.FACTORIES, "aws", broken)
    registry = BackendRegistry()
    conf = AWSBackendConfig()
    asyncio.run(configure_projects(registry, [("id-a", "a", conf)], timeout=1))
    assert registry.configured == []
    assert registry.failures[0].reason == "ImportError: No module named 'boto3'"


def _rows(project_id: str, name: str) -> PoolRows:
    return PoolRows(
        project_name=name,
        fleets=[("f", "cloud", {"type": "fleet", "name": "cloud", "nodes": {"min": 0, "max": 2}})],
        instances=[],
        counts={},
        live_backends=set(),
        project_id=project_id,
    )


def test_a_project_gets_offers_from_its_own_cloud_only(tmp_path: Path) -> None:
    r = _registry(tmp_path, {"a": "ok", "b": "ok"})
    ctx = SimpleNamespace(backends=r, offer_cache=OfferCache())
    pa = asyncio.run(with_capacity(ctx, _rows("id-a", "a")))  # type: ignore[arg-type]
    pb = asyncio.run(with_capacity(ctx, _rows("id-b", "b")))  # type: ignore[arg-type]
    pc = asyncio.run(with_capacity(ctx, _rows("id-c", "c")))  # type: ignore[arg-type]
    cloud = [o for o in pa.capacity[0].offers if o.backend == "aws"]
    assert [o.price for o in cloud] == [1.0]
    assert [o.price for o in pb.capacity[0].offers if o.backend == "aws"] == [2.0]
    assert not [o for o in pc.capacity[0].offers if o.backend == "aws"]
    # The offer cache keys by the backend, not its type: each project's cloud was asked once.
    assert r.made["a"].calls == 1 and r.made["b"].calls == 1  # type: ignore[attr-defined]


def test_capabilities_are_read_per_project(tmp_path: Path) -> None:
    from dstack.server.services.hosts import capabilities

    r = _registry(tmp_path, {"a": "ok"})
    r.made["a"].capabilities = Capabilities(spot=True)  # type: ignore[attr-defined]
    ctx = SimpleNamespace(backends=r)
    assert capabilities(ctx, "aws", "id-a").spot  # type: ignore[arg-type]
    assert not capabilities(ctx, "aws", "id-b").creates_instances  # type: ignore[arg-type]
