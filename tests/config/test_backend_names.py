"""SSH-fleet hosts are backend `ssh` here and `remote` in the original: a file that says
`backends: [remote]` must reach the SSH hosts, and the plan shows one name (`ssh`)."""

from __future__ import annotations

import pytest

from dstack.errors import ConfigurationError
from dstack.models.common import canonical_backend
from dstack.models.configurations import parse_configuration
from dstack.server.scheduler.placement import profile_reason
from dstack.server.services.jobspecs import build_job_specs
from dstack.server.services.pool import requirements_for


def _req(backends: list[str]):  # noqa: ANN202 - a scheduler Requirements
    conf = parse_configuration({"type": "task", "commands": ["x"], "backends": backends})
    return requirements_for(conf, build_job_specs("r", conf, None)[0].requirements)


@pytest.mark.parametrize("spelling", ["remote", "ssh"])
def test_both_spellings_select_ssh_hosts(spelling: str) -> None:
    req = _req([spelling])
    assert req.backends == ("ssh",)
    assert profile_reason(req, "ssh", "remote", "ssh", 0.0, False) is None
    assert profile_reason(req, "aws", "us-east-1", "t3", 0.1, False) is not None


def test_local_backend_can_be_named() -> None:
    assert _req(["local"]).backends == ("local",)


def test_stored_configuration_shows_one_name() -> None:
    conf = parse_configuration({"type": "fleet", "name": "f", "nodes": 1, "backends": ["remote"]})
    assert conf.model_dump(mode="json")["backends"] == ["ssh"]
    assert canonical_backend("remote") == "ssh" and canonical_backend("aws") == "aws"


def test_unknown_backend_is_still_refused() -> None:
    with pytest.raises(ConfigurationError, match="backends"):
        parse_configuration({"type": "task", "commands": ["x"], "backends": ["nope"]})
