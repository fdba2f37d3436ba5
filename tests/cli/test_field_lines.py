"""Server refusals name the line of the user's file they are about."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dstack.api.client import ServerError
from dstack.cli.commands import apply
from dstack.cli.common import CLIError
from dstack.cli.field_lines import field_loc, locate

FILE = """\
type: task
name: pinned
commands:
  - echo hi
env:
  - A=1
  - B
resources:
  gpu: 0
instances: [does-not-exist]
"""


@pytest.mark.parametrize(
    ("field", "loc"),
    [
        ("run_spec.configuration.instances", ("instances",)),
        ("plan.run_spec.configuration.groups.1.replicas", ("groups", 1, "replicas")),
        ("configuration.volumes", ("volumes",)),
        ("backends[2]", ("backends", 2)),
        ("plan.run_spec.run_name", None),
        ("next_token", None),
        (None, None),
    ],
)
def test_field_paths_become_file_paths(field: str | None, loc: tuple | None) -> None:
    assert field_loc(field) == loc


def test_lines_of_refused_fields(tmp_path: Path) -> None:
    path = tmp_path / "t.yml"
    path.write_text(FILE)
    assert locate(str(path), "run_spec.configuration.instances") == f"{path}:10"
    assert locate(str(path), "run_spec.configuration.env.1") == f"{path}:7"
    # A field the file does not spell falls back to its nearest written parent.
    assert locate(str(path), "run_spec.configuration.resources.gpu.count") == f"{path}:9"
    assert locate("-", "run_spec.configuration.instances") is None


def test_apply_prefixes_the_servers_refusal_with_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.yml"
    path.write_text(FILE)

    def refuse(*_: object) -> int:
        raise ServerError(
            "`instances`: no instance matches does-not-exist", status_code=400,
            field="run_spec.configuration.instances",
        )  # fmt: skip

    monkeypatch.setattr("dstack.cli.apply_runs.apply_run", refuse)
    args = argparse.Namespace(file=str(path), yes=True)
    with pytest.raises(CLIError, match=rf"^{path}:10: `instances`: no instance matches"):
        apply.run(args)
