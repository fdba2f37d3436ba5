"""Which build of the user's IDE is installed here, so the dev environment can pre-install the
matching remote server (`version` in the configuration) and the first connect skips the
download. Only used when the configuration leaves `version` out.

`code --version` and `cursor --version` print the version, then the commit, then the arch;
`windsurf --version` prints the same shape, and the server wants `version@commit` for it.
Any failure (not installed, a wrapper that prints something else, too slow) means "unknown":
the IDE then installs its own server on first connect, as it would without us.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable

COMMANDS = {"vscode": "code", "cursor": "cursor", "windsurf": "windsurf"}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_VERSION = re.compile(r"^\d+(\.\d+)*$")
TIMEOUT = 3.0

Runner = Callable[[list[str]], str | None]


def _run(cmd: list[str]) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *cmd[1:]],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_version_output(ide: str, output: str) -> str | None:
    """The `version` value for `ide` from its `--version` output, or None if unrecognised."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if len(lines) < 2 or not _COMMIT.match(lines[1]) or not _VERSION.match(lines[0]):
        return None
    if ide == "windsurf":
        return f"{lines[0]}@{lines[1]}"
    return lines[1]


def detect(ide: str, run: Runner = _run) -> str | None:
    command = COMMANDS.get(ide)
    if command is None:
        return None
    output = run([command, "--version"])
    return parse_version_output(ide, output) if output else None


def fill_version(data: dict, run: Runner = _run) -> dict:
    """`data` with `version` detected for a dev environment that names an IDE but no version."""
    if data.get("type") != "dev-environment" or not data.get("ide") or data.get("version"):
        return data
    version = detect(data["ide"], run)
    return {**data, "version": version} if version else data
