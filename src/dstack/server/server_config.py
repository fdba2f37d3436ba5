"""Reading `config.yml` in the server directory. It is read before anything else at start, so a
bad file stops the server with `file:line: field: message` and changes nothing."""

from __future__ import annotations

from pathlib import Path

from dstack.errors import ConfigurationError
from dstack.models.loading import load_yaml_model
from dstack.models.server_config import ServerConfig

CONFIG_FILE = "config.yml"


def config_path(server_dir: Path) -> Path:
    return server_dir / CONFIG_FILE


def load_server_config(path: Path) -> ServerConfig:
    """The file's projects and backends; a missing file is an empty configuration (no cloud
    backends). Raises `ConfigurationError` naming the file and line."""
    if not path.exists():
        return ServerConfig()
    try:
        return load_yaml_model(path, ServerConfig)
    except ConfigurationError as exc:
        if exc.message == "configuration file is empty":
            return ServerConfig()
        raise
