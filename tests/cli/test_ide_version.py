"""IDE version auto-detection: the `--version` shapes of each IDE, and that a configured
`version`, a missing IDE binary or an odd output leave the configuration as it was."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dstack.cli import ide_version
from dstack.cli.ide_version import detect, fill_version, parse_version_output

COMMIT = "1e790d77f81672c49be070e04474901747115651"


@pytest.mark.parametrize(
    "ide, output, expected",
    [
        ("vscode", f"1.95.3\n{COMMIT}\nx64\n", COMMIT),
        ("cursor", f"0.42.5\n{COMMIT}\nx64\n", COMMIT),
        ("windsurf", f"1.2.6\n{COMMIT}\nx64\n", f"1.2.6@{COMMIT}"),
        ("vscode", "Warning: something\n1.95.3\n", None),
        ("vscode", f"1.95.3\n{COMMIT[:-1]}\n", None),
        ("vscode", "", None),
    ],
)
def test_parse_version_output(ide: str, output: str, expected: str | None) -> None:
    assert parse_version_output(ide, output) == expected


def test_detect_asks_the_ides_own_command() -> None:
    seen: list[list[str]] = []

    def run(cmd: list[str]) -> str:
        seen.append(cmd)
        return f"1.0.0\n{COMMIT}\n"

    assert detect("cursor", run) == COMMIT
    assert seen == [["cursor", "--version"]]
    assert detect("zed", run) is None  # no server to pre-install
    assert len(seen) == 1


def test_fill_version_only_when_missing() -> None:
    def run(cmd: list[str]) -> str:
        return f"1.0.0\n{COMMIT}\n"

    dev = {"type": "dev-environment", "ide": "vscode", "version": None}
    assert fill_version(dev, run)["version"] == COMMIT
    pinned = {**dev, "version": "abc"}
    assert fill_version(pinned, run) is pinned
    assert fill_version({**dev, "ide": None}, run)["version"] is None
    assert fill_version({"type": "task", "commands": ["x"]}, run) == {
        "type": "task",
        "commands": ["x"],
    }
    assert fill_version(dev, lambda cmd: None)["version"] is None


def test_detect_runs_a_real_binary_on_path(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "code"
    fake.write_text(f"#!/bin/sh\necho 1.95.3\necho {COMMIT}\necho x64\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    broken = tmp_path / "cursor"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
    assert detect("vscode") == COMMIT
    assert detect("cursor") is None  # failed: unknown, not an error
    monkeypatch.setattr(ide_version, "TIMEOUT", 0.2)
    fake.write_text("#!/bin/sh\nsleep 5\n")
    assert detect("vscode") is None  # too slow: unknown
