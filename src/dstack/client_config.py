"""The client's list of servers and projects: `~/.dstack/config.yml`.

Kept at the top level and free of pydantic/httpx because both the CLI (before it talks to a
server) and the server (which registers its `main` project on first start) read and write it.
The file layout and the rules (one default, keys sorted, legacy `repos` dropped) follow the
original so that an existing config file keeps working.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstack.errors import DstackError

logger = logging.getLogger(__name__)


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
    import yaml

    path = path or config_path()
    if not path.exists():
        return []
    try:
        with path.open() as f:
            return _parse_projects(yaml.safe_load(f))
    except (yaml.YAMLError, ValueError, OSError) as e:
        logger.error("Invalid client configuration %s: %s", path, e)
        return []


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
