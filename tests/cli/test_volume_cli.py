"""`dstack volume` and `dstack apply` of a volume, run through the CLI's `main` against a test
double of the API client (the server side is tests/server/test_volumes.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dstack.api.client import ServerError
from dstack.cli.main import main
from dstack.models.volumes import Volume

NET = {
    "id": "v1", "name": "data", "project_name": "main", "user": "admin",
    "configuration": {"type": "volume", "name": "data", "backend": "aws", "region": "eu-west-1"},
    "created_at": "2026-01-01T00:00:00+00:00", "status": "active",
    "provisioning_data": {"region": "eu-west-1", "availability_zone": "eu-west-1a"},
    "attachments": [{"instance": {"name": "gpu-0", "fleet_name": "gpus"}, "job": None,
                     "status": "attached", "message": None}],
}  # fmt: skip
DIRECTORY = {
    "id": "v2", "name": "ckpt", "project_name": "main", "configuration":
    {"type": "volume", "name": "ckpt", "fleet": "my-ssh"}, "created_at":
    "2026-01-01T00:00:00+00:00", "status": "active", "to_be_deleted": True,
}  # fmt: skip


class FakeAPI:
    project = "main"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.plan: dict[str, Any] = {}
        self.refuse: str | None = None

    def list_volumes_raw(self) -> list[dict[str, Any]]:
        return [NET, DIRECTORY]

    def list_volumes(self) -> list[Volume]:
        return [Volume.model_validate(v) for v in self.list_volumes_raw()]

    def get_volume_raw(self, name: str) -> dict[str, Any]:
        return next(v for v in self.list_volumes_raw() if v["name"] == name)

    def get_volume_plan(self, configuration: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("plan", configuration))
        if self.refuse:
            raise ServerError(self.refuse, status_code=400)
        return self.plan

    def create_volume(self, configuration: dict[str, Any]) -> None:
        self.calls.append(("create", configuration))

    def delete_volumes(self, names: list[str], force: bool = False) -> None:
        self.calls.append(("delete", (names, force)))
        if self.refuse:
            raise ServerError(self.refuse, status_code=400)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeAPI:
    fake = FakeAPI()
    monkeypatch.setattr("dstack.cli.common.api_client", lambda args: fake)
    monkeypatch.setattr("dstack.cli.apply_other.api_client", lambda args: fake)
    monkeypatch.setenv("COLUMNS", "200")
    return fake


def test_list_shows_backend_or_fleet_and_verbose_columns(api: FakeAPI, capsys: Any) -> None:
    assert main(["volume"]) == 0
    text = capsys.readouterr().out
    assert "NAME" in text and "BACKEND" in text and "aws (eu-west-1)" in text
    assert "fleet my-ssh" in text and "deleting" in text
    assert main(["volume", "-v"]) == 0
    text = capsys.readouterr().out
    for col in ("REGION", "ATTACHED", "ERROR"):
        assert col in text
    assert "eu-west-1 (eu-west-1a)" in text and "gpus" in text


def test_list_and_get_json(api: FakeAPI, capsys: Any) -> None:
    assert main(["volume", "--json"]) == 0
    assert [v["name"] for v in json.loads(capsys.readouterr().out)] == ["data", "ckpt"]
    assert main(["volume", "get", "data", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "v1"
    assert main(["volume", "get", "data"]) == 0
    text = capsys.readouterr().out
    assert "gpu-0" in text and "attached" in text


def test_delete_refused_prints_the_reason_and_exits_1(api: FakeAPI, capsys: Any) -> None:
    api.refuse = "Volume data is in use by run train on instance gpu-0"
    assert main(["volume", "delete", "data", "-y"]) == 1
    assert "in use by run train on instance gpu-0" in capsys.readouterr().err
    api.refuse = None
    assert main(["volume", "delete", "ckpt", "-y", "--force"]) == 0
    assert api.calls[-1] == ("delete", (["ckpt"], True))
    assert "Volume ckpt deleted" in capsys.readouterr().out


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "vol.dstack.yml"
    path.write_text(text)
    return str(path)


def test_apply_shows_the_plan_creates_and_waits(api: FakeAPI, tmp_path: Path, capsys: Any) -> None:
    path = _file(tmp_path, "type: volume\nname: data\nbackend: aws\nregion: eu-west-1\n"
                 "resources:\n  disk: 500GB\n")  # fmt: skip
    api.plan = {"action": "create", "volume_type": "managed", "backend": "aws",
                "region": "eu-west-1", "size_gb": 500.0, "user": "admin"}  # fmt: skip
    assert main(["apply", "-f", path, "-y"]) == 0
    text = capsys.readouterr().out
    assert "Volume data does not exist yet." in text and "500GB" in text and "managed" in text
    assert "Volume data is active" in text
    (_, created), = [c for c in api.calls if c[0] == "create"]
    assert created["size"] == 500.0  # the guide's `resources.disk` is the size


def test_apply_no_changes_and_refused_change(api: FakeAPI, tmp_path: Path, capsys: Any) -> None:
    path = _file(tmp_path, "type: volume\nname: ckpt\nfleet: my-ssh\n")
    api.plan = {"action": "no_changes", "volume_type": "directory", "fleet": "my-ssh"}
    assert main(["apply", "-f", path, "-y"]) == 0
    assert "No configuration changes detected." in capsys.readouterr().out
    assert not [c for c in api.calls if c[0] == "create"]
    api.refuse = "volume ckpt exists with a different configuration (fleet: 'a' -> 'b')"
    assert main(["apply", "-f", path, "-y"]) == 1
    assert "exists with a different configuration" in capsys.readouterr().err
