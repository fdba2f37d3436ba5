"""Every field of every configuration type is in the support table (walked from the models,
so a new field cannot be forgotten), and every refused field, when set, is refused: by the CLI
at its file and line, and by the server's plan naming the field."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from app_client import TestClient, app_client
from dstack.errors import ConfigurationError
from dstack.models import field_support as fs
from dstack.models.configurations import CONFIGURATION_TYPES
from dstack.models.loading import load_for_apply
from dstack.server.backends.base import Capabilities

TOKEN = "admin-token-for-field-support"

BASE: dict[str, dict[str, Any]] = {
    "dev-environment": {"type": "dev-environment", "name": "dev1", "ide": "vscode"},
    "task": {"type": "task", "name": "task1", "commands": ["echo hi"]},
    "service": {"type": "service", "name": "svc1", "commands": ["serve"], "port": 8000},
    "fleet": {"type": "fleet", "name": "fleet1", "nodes": 1},
    "volume": {"type": "volume", "name": "vol1", "backend": "aws", "region": "us-east-1",
               "size": "10GB"},  # fmt: skip
    "gateway": {"type": "gateway", "name": "gw1", "backend": "aws", "region": "us-east-1"},
}

# A value that sets each refused field (top-level key -> value merged into the base).
SAMPLES: dict[str, dict[str, Any]] = {
    "user": {"user": "nobody"},
    "privileged": {"privileged": True},
    "entrypoint": {"entrypoint": "python"},
    "home_dir": {"home_dir": "/home/me"},
    "registry_auth": {"registry_auth": {"username": "u", "password": "p"}},
    "python": {"python": "3.12"},
    "nvcc": {"nvcc": True},
    "docker": {"docker": True},
    "single_branch": {"single_branch": True},
    "env": {"env": {"TOKEN": "${{ secrets.TOKEN }}"}},
    "resources.shm_size": {"resources": {"shm_size": "1GB"}},
    "repos": {"repos": ["https://github.com/example/repo.git"]},
    "files": {"files": ["data.txt:/data/data.txt"]},
    "dstack": {"dstack": True},
    "backend_options": {"backend_options": [{"type": "vastai"}]},
    "utilization_policy": {"utilization_policy": {"min_gpu_utilization": 10, "time_window": "1h"}},
    "startup_order": {"startup_order": "workers-first"},
    "stop_criteria": {"stop_criteria": "master-done"},
    "schedule": {"schedule": {"cron": "0 * * * *"}},
    "gateway": {"gateway": True},
    "https": {"https": True},
    "claim_name": {"backend": "kubernetes", "claim_name": "pvc"},
    "storage_class_name": {"backend": "kubernetes", "storage_class_name": "fast"},
    "access_modes": {"backend": "kubernetes", "access_modes": ["ReadWriteMany"]},
    "read_only": {"backend": "kubernetes", "read_only": True},
    "type": {},
}


def _model_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every field path of a configuration model, descending into `fs.NESTED` sub-models."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path
        if path in fs.NESTED:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                yield from _model_paths(type(default), f"{path}.")


ALL_PATHS = [(kind, p) for kind, m in CONFIGURATION_TYPES.items() for p in _model_paths(m)]


@pytest.mark.parametrize(("kind", "path"), ALL_PATHS)
def test_every_model_field_is_in_the_table(kind: str, path: str) -> None:
    assert fs.rule(kind, path) is not None, f"{kind}: `{path}` is not in field_support.SUPPORT"


@pytest.mark.parametrize("kind", list(CONFIGURATION_TYPES))
def test_table_lists_no_field_the_model_lacks(kind: str) -> None:
    paths = {p for k, p in ALL_PATHS if k == kind}
    assert set(fs.SUPPORT[kind]) - paths == set()


CAPABILITIES = {f.name for f in dataclasses.fields(Capabilities)}
RULES = [(k, p, r) for k, table in fs.SUPPORT.items() for p, r in table.items()]


@pytest.mark.parametrize(("kind", "path", "rule"), RULES)
def test_rule_is_complete(kind: str, path: str, rule: fs.FieldRule) -> None:
    if rule.support is fs.Support.BACKEND:
        assert rule.capability in CAPABILITIES
    if rule.support is fs.Support.REFUSED:
        assert rule.message
        # A gateway file is refused as a whole (`type`); other refused fields need a sample.
        assert kind == "gateway" or path in SAMPLES or path.split(".")[-1] in SAMPLES


REFUSED = [(k, p) for k, p, r in RULES if r.support is fs.Support.REFUSED]


def _config(kind: str, path: str) -> dict[str, Any]:
    if kind == "gateway":  # the whole type is refused: any field of it names `type`
        return dict(BASE[kind])
    sample = SAMPLES.get(path) or SAMPLES[path.split(".")[-1]]
    return {**BASE[kind], **sample}


def _expected_path(kind: str, path: str) -> str:
    return "type" if kind == "gateway" else path


@pytest.mark.parametrize(("kind", "path"), REFUSED)
def test_cli_refuses_a_set_refused_field_at_its_line(
    kind: str, path: str, tmp_path: Path
) -> None:
    file = tmp_path / "x.dstack.yml"
    file.write_text(yaml.safe_dump(_config(kind, path), sort_keys=False))
    with pytest.raises(ConfigurationError) as info:
        load_for_apply(file)
    error = info.value
    expected = _expected_path(kind, path)
    assert error.path == expected, str(error)
    top = expected.split(".")[0]
    lines = file.read_text().splitlines()
    assert error.line is not None and lines[error.line - 1].lstrip().startswith(
        expected.split(".")[-1] if "." in expected else top
    )


@pytest.mark.parametrize("kind", [k for k in BASE if k != "gateway"])
def test_base_configurations_are_accepted(kind: str, tmp_path: Path) -> None:
    file = tmp_path / "x.dstack.yml"
    file.write_text(yaml.safe_dump(BASE[kind]))
    assert load_for_apply(file).type == kind
    assert fs.refusals(load_for_apply(file)) == []


def test_defaults_and_harmless_values_are_not_refused(tmp_path: Path) -> None:
    conf = {**BASE["service"], "privileged": False, "gateway": False, "https": False,
            "env": {"A": "plain"}, "docker": False}  # fmt: skip
    file = tmp_path / "x.dstack.yml"
    file.write_text(yaml.safe_dump(conf))
    assert load_for_apply(file).type == "service"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_client(tmp_path_factory.mktemp("field-support"), TOKEN) as c:
        yield c


def _plan(client: TestClient, kind: str, conf: dict[str, Any]) -> Any:
    base = "/api/project/main"
    if kind == "fleet":
        return client.post(f"{base}/fleets/get_plan", json={"spec": {"configuration": conf}})
    if kind == "volume":
        return client.post(f"{base}/volumes/get_plan", json={"configuration": conf})
    spec = {"run_name": conf.get("name"), "configuration": conf}
    return client.post(f"{base}/runs/get_plan", json={"run_spec": spec})


@pytest.mark.parametrize(("kind", "path"), [(k, p) for k, p in REFUSED if k != "gateway"])
def test_server_plan_refuses_a_set_refused_field(client: TestClient, kind: str, path: str) -> None:
    answer = _plan(client, kind, _config(kind, path))
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"][0]
    assert detail["field"].endswith(path) and path in detail["msg"], detail
