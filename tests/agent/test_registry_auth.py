"""`registry_auth` in the agent's job spec: validated without echoing the password (the pull
itself is agent/registry.py, tested in test_runtime_fields.py)."""

from __future__ import annotations

import pytest

from dstack.agent.spec import BadRequest, validate_spec

PASSWORD = "pw-sentinel-9f2c"


def _spec(**extra: object) -> dict:
    return {"id": "j1", "runtime": "docker", "image": "ghcr.io/acme/app:1", **extra}


def test_registry_auth_is_kept_and_checked() -> None:
    auth = {"username": "bot", "password": PASSWORD}
    assert validate_spec(_spec(registry_auth=auth))["registry_auth"] == auth
    assert validate_spec(_spec())["registry_auth"] is None
    with pytest.raises(BadRequest) as e:
        validate_spec(_spec(registry_auth={"username": "bot", "password": 5}))
    assert "registry_auth" in str(e.value) and PASSWORD not in str(e.value)
