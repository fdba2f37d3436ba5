"""Runtime fields at plan time: which runtime and image a configuration gets, and which hosts
refuse it (and why)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dstack.errors import ServerClientError
from dstack.models.configurations import parse_configuration
from dstack.server.scheduler.ranking import rank
from dstack.server.scheduler.runtime_fit import HostFacts, RuntimeNeeds, runtime_refusal
from dstack.server.services import runtime_fields as rf
from dstack.server.services.jobspecs import build_job_specs
from dstack.server.services.pool import requirements_for

from .test_scheduler import inst

TASK = {"type": "task", "commands": ["echo hi"], "resources": {"cpu": "1..", "memory": "1GB.."}}
HOST = {"agent_user": "ubuntu", "agent_uid": 1000, "agent_root": False,
        "pythons": ["3.10", "3.11"], "uv": False, "nvcc": False}  # fmt: skip


def conf(**kw: Any) -> Any:
    return parse_configuration({**TASK, **kw})


def ranked(c: Any, info: dict[str, Any] | None = HOST, docker: bool = False) -> Any:
    job = build_job_specs("r", c, None)[0]
    req = requirements_for(c, job.requirements)
    host = dataclasses.replace(inst(), facts=HostFacts.from_host_info(info), docker=docker)
    return rank(req, [host], [])


def test_plain_task_runs_as_processes() -> None:
    job = build_job_specs("r", conf(python="3.11"), None)[0]
    assert job.image_name is None and job.python == "3.11"
    assert ranked(conf(python="3.11")).candidates


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"privileged": True}, ["privileged"]),
        ({"resources": {"shm_size": "1GB"}}, ["resources.shm_size"]),
    ],
)
def test_container_only_fields_take_the_default_image(fields: Any, expected: list[str]) -> None:
    c = conf(**fields, python="3.11")
    assert rf.container_fields(c) == tuple(expected)
    job = build_job_specs("r", c, None)[0]
    assert job.image_name == "python:3.11-slim" and job.python is None
    ranking = ranked(c)
    assert not ranking.candidates
    assert ranking.field_refusals == [
        f"fleet-i1: `{expected[0]}` needs the docker runtime; the host has no Docker engine"
    ]
    assert ranked(c, docker=True).candidates


def test_default_image_is_a_server_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rf.DEFAULT_IMAGE_ENV, "registry.local/py:{python}")
    monkeypatch.setenv(rf.DEFAULT_CUDA_IMAGE_ENV, "registry.local/cuda-py:{python}")
    assert rf.default_image("3.10", False) == "registry.local/py:3.10"
    assert rf.default_image(None, True) == f"registry.local/cuda-py:{rf.DEFAULT_PYTHON}"
    assert rf.container_image(conf(privileged=True, nvcc=True)) == "registry.local/cuda-py:3.12"


def test_user_needs_a_root_agent_on_the_process_runtime() -> None:
    ranking = ranked(conf(user="alice"))
    assert ranking.field_refusals == [
        "fleet-i1: `user: alice` needs the agent on host fleet-i1 to run as root to switch "
        "users (it runs as ubuntu); set `user: ubuntu` or run the agent as root"
    ]
    assert ranked(conf(user="ubuntu")).candidates
    assert ranked(conf(user="1000")).candidates  # its own uid
    assert ranked(conf(user="alice"), {**HOST, "agent_root": True}).candidates
    assert ranked(conf(user="alice", image="img"), docker=True).candidates  # docker --user


def test_python_the_host_lacks_is_refused_naming_what_it_has() -> None:
    ranking = ranked(conf(python="3.12"))
    assert ranking.field_refusals == [
        "fleet-i1: `python: 3.12`: host fleet-i1 has python 3.10, 3.11 on PATH and no uv; "
        "install python3.12 there, or set `image`"
    ]
    assert ranked(conf(python="3.12"), {**HOST, "uv": True}).candidates
    assert ranked(conf(python="3.12"), None).candidates  # not reported yet: the agent checks


def test_nvcc_on_the_process_runtime_needs_it_on_the_host() -> None:
    assert "`nvcc`: host fleet-i1 has no nvcc" in ranked(conf(nvcc=True)).field_refusals[0]
    assert ranked(conf(nvcc=True), {**HOST, "nvcc": True}).candidates


def test_runtime_refusal_ignores_the_docker_runtime() -> None:
    facts = HostFacts.from_host_info(HOST)
    assert runtime_refusal(RuntimeNeeds(runtime="docker", user="x"), facts, "h") is None


def test_docker_inside_the_job_is_refused() -> None:
    with pytest.raises(ServerClientError) as e:
        rf.check_runtime_fields(conf(docker=True))
    assert e.value.field == "configuration.docker" and "`docker: true`" in str(e.value)


@pytest.mark.parametrize(
    ("repo", "field", "text"),
    [
        ("file:///etc", "configuration.repos.0.url", "only https, http, git and ssh URLs"),
        ("ext::sh -c id", "configuration.repos.0.url", "only https, http, git and ssh URLs"),
        ({"local_path": ".", "path": "/src"}, "configuration.repos.0.path", "`path: /src`"),
    ],
)
def test_repos_that_cannot_be_cloned_are_refused(repo: Any, field: str, text: str) -> None:
    entry = repo if isinstance(repo, dict) else {"url": repo}
    with pytest.raises(ServerClientError) as e:
        rf.check_runtime_fields(conf(repos=[entry]))
    assert e.value.field == field and text in str(e.value)


def test_repo_credentials_are_sealed_and_never_shown(tmp_path: Any) -> None:
    from dstack.models.runs import RunSpec
    from dstack.server.services import repos
    from dstack.server.services.crypto import Box

    box = Box(tmp_path / "key")
    c = conf(repos=[{"url": "https://git.example/r.git", "branch": "dev"}], single_branch=True)
    spec = RunSpec(configuration=c.model_dump(mode="json"),
                   repo_data={"repo_type": "remote", "repo_creds": {"token": "tok"}})  # fmt: skip
    sealed = repos.seal_creds(spec, box)
    assert "tok" not in sealed.model_dump_json() and repos.SEALED in sealed.repo_data
    assert "tok" not in repos.without_creds(sealed).model_dump_json()
    job = build_job_specs("r", c, None)[0]
    assert repos.agent_repo(job, sealed, box) == {
        "url": "https://git.example/r.git", "branch": "dev", "hash": None, "path": ".",
        "if_exists": "error", "single_branch": True, "token": "tok",
    }  # fmt: skip
    with pytest.raises(ServerClientError):
        repos.seal_creds(spec.model_copy(update={"repo_data": {"repo_creds": {"x": "y"}}}), box)


def test_entrypoint_takes_the_commands_as_arguments() -> None:
    job = build_job_specs("r", conf(entrypoint="python3 -u -c", commands=["print(1)"]), None)[0]
    assert job.commands == ["python3", "-u", "-c", "print(1)"]


def test_registry_password_is_never_shown_back() -> None:
    from dstack.models.runs import RunSpec
    from dstack.server.services.runs_view import REDACTED, redact_run_spec

    auth = {"username": "bob", "password": "s3cret"}
    spec = RunSpec(configuration={**TASK, "image": "img", "registry_auth": auth})
    shown = redact_run_spec(spec)
    assert shown.configuration["registry_auth"] == {"username": "bob", "password": REDACTED}
    assert "s3cret" not in shown.model_dump_json()
    assert spec.configuration["registry_auth"]["password"] == "s3cret"  # the stored one stays


def test_the_agent_gets_user_python_and_the_pull_credentials() -> None:
    from dstack.models.runs import RunSpec
    from dstack.server.db import tables as t
    from dstack.server.reconcilers.job_start import runtime_fields

    auth = {"username": "bob", "password": "s3cret"}
    docker_conf = {**TASK, "image": "img", "user": "1000", "registry_auth": auth}
    run = t.Run(run_spec=RunSpec(configuration=docker_conf).model_dump_json())
    job = build_job_specs("r", parse_configuration(docker_conf), None)[0]
    assert runtime_fields(run, job, "docker") == {
        "user": "1000",
        "privileged": False,
        "registry_auth": auth,
    }
    process = build_job_specs("r", conf(user="alice", python="3.11"), None)[0]
    assert runtime_fields(run, process, "process") == {
        "user": "alice",
        "privileged": False,
        "python": "3.11",
    }


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"registry_auth": {"username": "u", "password": "p"}}, "configuration.registry_auth"),
        ({"image": "img", "nvcc": True}, "configuration.nvcc"),
    ],
)
def test_fields_without_effect_are_refused(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ServerClientError) as e:
        rf.check_runtime_fields(conf(**fields))
    assert e.value.field == field
    rf.check_runtime_fields(conf(registry_auth={"username": "u", "password": "p"}, image="i"))
