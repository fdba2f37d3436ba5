"""The client's list of servers and projects: `~/.dstack/config.yml`.

Kept at the top level and free of pydantic/httpx because both the CLI (before it talks to a
server) and the server (which registers its `main` project on first start) read and write it.
The file layout and the rules (one default, keys sorted, legacy `repos` dropped) follow the
original so that an existing config file keeps working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstack.errors import DstackError


class ConfigError(DstackError):
    """The client configuration cannot answer the question (no default, unknown project)."""


@dataclass
class ProjectConfig:
    name: str
    url: str
    token: str
    default: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "name": self.name, "token": self.token, "url": self.url}


def config_path() -> Path:
    """Always under `$HOME` (read at call time so tests and the server can point HOME elsewhere)."""
    home = os.environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".dstack" / "config.yml"


def _parse_projects(data: Any) -> list[ProjectConfig]:
    """Validate the raw YAML; raise ValueError on anything the original would refuse."""
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ValueError("the top level must be a mapping")
    unknown = set(data) - {"projects", "repos"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    raw = data.get("projects") or []
    if not isinstance(raw, list):
        raise ValueError("projects must be a list")
    projects = []
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("each project must be a mapping")
        for key in ("name", "url", "token"):
            if not isinstance(item.get(key), str):
                raise ValueError(f"project {key} must be a string")
        default = item.get("default", False)
        if default is None:
            default = False
        if not isinstance(default, bool):
            raise ValueError("project default must be a boolean")
        projects.append(ProjectConfig(item["name"], item["url"], item["token"], default))
    return projects


def load_projects(path: Path | None = None) -> list[ProjectConfig]:
    """Read the file; a broken file is logged and treated as empty, as the original does."""
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        _log_invalid(path, e)
        return []
    data = quick_load(text)
    if data is None:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            _log_invalid(path, e)
            return []
    try:
        return _parse_projects(data)
    except ValueError as e:
        _log_invalid(path, e)
        return []


def _log_invalid(path: Path, error: Exception) -> None:
    import logging

    logging.getLogger(__name__).error("Invalid client configuration %s: %s", path, error)


# `quick_load`: the file as `save_projects` writes it, read without PyYAML, whose import alone
# is ~20 ms of the 150 ms `dstack ps` may take (issue 16). Only lines of exactly the shape
# `yaml.safe_dump` gives are taken, and only values YAML itself reads as those strings: a
# plain scalar that starts with a letter or `_` is a string unless it is a boolean or null
# word (PyYAML tries numbers and dates only on a digit, sign, `.`, `<`, `=` or `~`); one that
# starts with a digit is taken when it holds a character no number or date can hold.
_BLOCK_KEYS = ("default", "name", "token", "url")
_PLAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:~%+@")
_YAML_WORDS = frozenset(
    w
    for base in ("yes", "no", "true", "false", "on", "off", "null")
    for w in (base, base.capitalize(), base.upper())
)
_NOT_IN_NUMBERS_OR_DATES = frozenset("ghjklmopqrsuvwyzGHJKLMOPQRSUVWXY/@%")


def _plain_string(value: str) -> bool:
    if not value or not set(value) <= _PLAIN_CHARS or value.endswith(":"):
        return False
    if not (value[0].isalnum() or value[0] == "_"):
        return False  # an indicator, a sign or a dot: left to PyYAML
    if value[0].isalpha() or value[0] == "_":
        return value not in _YAML_WORDS
    return not _NOT_IN_NUMBERS_OR_DATES.isdisjoint(value)


def quick_load(text: str) -> dict[str, Any] | None:
    """What `yaml.safe_load(text)` returns, for a file in `save_projects`' own layout; None
    for anything else (the caller then asks PyYAML)."""
    lines = text.split("\n")
    if lines[0] != "projects:" or lines[-1] != "" or len(lines) < 3:
        return None
    projects: list[dict[str, Any]] = []
    for line in lines[1:-1]:
        if line.startswith("- "):
            projects.append({})
        elif not line.startswith("  ") or not projects:
            return None
        key, sep, value = line[2:].partition(": ")
        if not sep or key not in _BLOCK_KEYS or key in projects[-1]:
            return None
        if key == "default" and value in ("true", "false"):
            projects[-1][key] = value == "true"
        elif key != "default" and _plain_string(value):
            projects[-1][key] = value
        else:
            return None
    return {"projects": projects}


def save_projects(projects: list[ProjectConfig], path: Path | None = None) -> Path:
    """Rewrite the whole file with sorted keys and exactly one (or no) default entry."""
    import yaml

    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"projects": [p.to_dict() for p in projects]}
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        yaml.safe_dump(data, f, sort_keys=True, default_flow_style=False)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def add_project(name: str, url: str, token: str, default: bool = True) -> Path:
    """Add or update a project; the first project ever added becomes the default."""
    projects = load_projects()
    existing = next((p for p in projects if p.name == name), None)
    if existing is None:
        existing = ProjectConfig(name=name, url=url, token=token)
        projects.append(existing)
    else:
        existing.url, existing.token = url, token
    if default or not any(p.default for p in projects):
        for p in projects:
            p.default = p is existing
    return save_projects(projects)


def delete_project(name: str) -> bool:
    projects = load_projects()
    kept = [p for p in projects if p.name != name]
    if len(kept) == len(projects):
        return False
    save_projects(kept)
    return True


def set_default_project(name: str) -> None:
    projects = load_projects()
    if not any(p.name == name for p in projects):
        raise ConfigError(f"Project '{name}' not found")
    for p in projects:
        p.default = p.name == name
    save_projects(projects)


def get_project_config(name: str | None = None) -> ProjectConfig:
    """Resolve the project a command talks to, honouring the DSTACK_* environment overrides."""
    url = os.environ.get("DSTACK_SERVER_URL")
    token = os.environ.get("DSTACK_TOKEN")
    name = name or os.environ.get("DSTACK_PROJECT") or None
    if url and token:
        if not name:
            raise ConfigError(
                "DSTACK_SERVER_URL and DSTACK_TOKEN are set, but the project is not specified."
                " Set DSTACK_PROJECT or pass --project"
            )
        return ProjectConfig(name=name, url=url, token=token, default=True)
    projects = load_projects()
    if url and not projects:
        raise ConfigError("DSTACK_SERVER_URL is set, but DSTACK_TOKEN is not")
    project = _select(projects, name)
    if url:
        project.url = url
    if token:
        project.token = token
    return project


def _select(projects: list[ProjectConfig], name: str | None) -> ProjectConfig:
    if name is None:
        for p in projects:
            if p.default:
                return p
        raise ConfigError("No default project, specify project name")
    for p in projects:
        if p.name == name:
            return p
    raise ConfigError(f"Project {name} is not configured")
