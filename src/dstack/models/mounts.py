"""What a run brings into its container: `volumes`, `repos` (§8, §9) and `files`.

Each accepts a short string form which is split here, once, so the CLI and the server never
have to re-parse `name:/path` style strings.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator, model_validator

from dstack.models.common import (
    AbsolutePath,
    ConfigModel,
    Shorthand,
    field_error,
    normalize_container_path,
)

_WINDOWS_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]")
_STRING = ({"type": "string"},)


class VolumeMountPoint(ConfigModel):
    """A network volume; several names = whichever exists in the run's backend/region."""

    name: Annotated[list[str], Shorthand(_STRING)]
    path: AbsolutePath

    @field_validator("name", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and not value:
            raise ValueError("volume name list must not be empty")
        return value


class InstanceMountPoint(ConfigModel):
    """A host directory bind-mounted into the container. `optional`: a host without the
    directory runs the job without it (instead of failing); `read_only`: `:ro` in the short
    form."""

    instance_path: AbsolutePath
    path: AbsolutePath
    optional: bool = False
    read_only: bool = False


def _split_mount(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    source, sep, target = value.partition(":")
    if not sep or not source or not target:
        raise ValueError(f"invalid volume '{value}': expected `name:/path` or `/host:/path`")
    if "/" in source:
        mode = None
        if target.endswith((":ro", ":rw")):
            target, mode = target[:-3], target[-2:]
        out: dict[str, Any] = {"instance_path": source, "path": target}
        if mode is not None:
            out["read_only"] = mode == "ro"
        return out
    if ":" in target:
        raise ValueError(f"invalid volume '{value}': a network volume takes no mode (`:ro`)")
    return {"name": source, "path": target}


def _mount_kind(value: Any) -> str:
    if isinstance(value, InstanceMountPoint) or (
        isinstance(value, dict) and "instance_path" in value
    ):
        return "@instance"
    return "@volume"


MountPoint = Annotated[
    Annotated[
        Annotated[VolumeMountPoint, Tag("@volume")]
        | Annotated[InstanceMountPoint, Tag("@instance")],
        Discriminator(_mount_kind),
    ],
    BeforeValidator(_split_mount),
    Shorthand(_STRING),
]

# --- repos -------------------------------------------------------------------------------------


def _split_repo(value: str) -> dict[str, Any]:
    """`<local-or-url>[:<path>]`; colons inside URLs and Windows drives are not separators."""
    start = 2 if _WINDOWS_DRIVE_RE.match(value) else 0
    first_colon = value.find(":", start)
    if first_colon == -1:
        return _repo_source(value)
    head = value[:first_colon]
    if value[first_colon + 1 : first_colon + 3] == "//":
        # scheme://host[:port]/path[:container]: a separator only after the first `/` of the path
        host_end = value.find("/", first_colon + 3)
        sep = -1 if host_end == -1 else value.find(":", host_end)
    elif "@" in head:
        # scp-like git@host:org/repo[:container]
        sep = value.find(":", first_colon + 1)
    else:
        sep = first_colon
    if sep == -1:
        return _repo_source(value)
    result = _repo_source(value[:sep])
    result["path"] = value[sep + 1 :]
    return result


def _repo_source(source: str) -> dict[str, Any]:
    is_url = "://" in source or ("@" in source.split(":", 1)[0] and ":" in source)
    return {"url": source} if is_url else {"local_path": source}


class RepoSpec(ConfigModel):
    local_path: str | None = None
    url: str | None = None
    branch: str | None = None
    hash: str | None = None
    path: str = "."
    if_exists: Literal["error", "skip"] = "error"

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("empty repo spec")
            return _split_repo(value)
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value:
            raise ValueError("repo path must not be empty")
        if value.startswith("~") and not (value == "~" or value.startswith("~/")):
            raise ValueError(f"repo path must not use the ~user form: '{value}'")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> RepoSpec:
        if (self.local_path is None) == (self.url is None):
            raise field_error(None, "a repo needs exactly one of `local_path` and `url`")
        return self


def _max_one_repo(value: Any) -> Any:
    if isinstance(value, list) and len(value) > 1:
        raise ValueError("at most one repo is supported")
    return value


Repos = Annotated[list[Annotated[RepoSpec, Shorthand(_STRING)]], BeforeValidator(_max_one_repo)]

# --- files -------------------------------------------------------------------------------------


class FileMapping(ConfigModel):
    """A local file or directory uploaded into the container (`path` defaults to the source)."""

    local_path: str = Field(min_length=1)
    path: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, dict) and "local_path" in value and "path" not in value:
            return {**value, "path": value["local_path"]}
        if not isinstance(value, str):
            return value
        start = 2 if _WINDOWS_DRIVE_RE.match(value) else 0
        sep = value.find(":", start)
        if sep == -1:
            return {"local_path": value, "path": value}
        return {"local_path": value[:sep], "path": value[sep + 1 :]}

    @field_validator("path")
    @classmethod
    def _container_path(cls, value: str) -> str:
        if _WINDOWS_DRIVE_RE.match(value) or value.startswith("\\"):
            raise ValueError(f"container path must be a POSIX path: '{value}'")
        return value


Files = list[Annotated[FileMapping, Shorthand(_STRING)]]

__all__ = [
    "FileMapping",
    "InstanceMountPoint",
    "MountPoint",
    "RepoSpec",
    "VolumeMountPoint",
    "normalize_container_path",
]
