"""Validation of a job submission; every error names the offending field."""

from __future__ import annotations

import re
from typing import Any

from dstack.agent import gitclone
from dstack.agent.ports import MAX_SEARCH
from dstack.agent.protocol import JOB_ID_RE

DEFAULT_STOP_DURATION = 300
# A key line must start with its type: no authorized_keys options (`command=`, ...) slip in.
KEY_TYPE_RE = re.compile(r"^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+")


USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,63})?$")
PYTHON_RE = re.compile(r"^3\.\d{1,2}$")


class BadRequest(ValueError):
    """A client error; the message names the field and becomes the 400 response."""


def _int(body: dict[str, Any], field: str, default: Any, minimum: int | None = None) -> Any:
    value = body.get(field, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field}: must be an integer")
    if minimum is not None and value < minimum:
        raise BadRequest(f"{field}: must be >= {minimum}")
    return value


def _opt_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{field}: must be a string or null")
    return value


def _str_list(body: dict[str, Any], field: str) -> list[str]:
    value = body.get(field) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{field}: must be a list of strings")
    return value


def _env(body: dict[str, Any]) -> dict[str, str]:
    value = body.get("env") or {}
    if not isinstance(value, dict):
        raise BadRequest("env: must be an object of strings")
    for key, val in value.items():
        if not key or "=" in key or "\0" in key:
            raise BadRequest(f"env: invalid variable name {key!r}")
        if not isinstance(val, str) or "\0" in val:
            raise BadRequest(f"env: value of {key} must be a string")
    return dict(value)


def _ports(body: dict[str, Any]) -> list[int]:
    value = body.get("ports") or []
    if not isinstance(value, list):
        raise BadRequest("ports: must be a list of integers")
    for port in value:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise BadRequest(f"ports: invalid port {port!r}")
    return list(dict.fromkeys(value))  # an app port may also be the service port


def _listen_port(body: dict[str, Any]) -> int | None:
    """The port the job's app must listen on; the agent checks it is free before starting."""
    port = _int(body, "listen_port", None, 1)
    if port is not None and port > 65535:
        raise BadRequest("listen_port: must be <= 65535")
    return port


def _abs_path(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise BadRequest(f"{field}: must be an absolute path")
    if ".." in value.split("/"):
        raise BadRequest(f"{field}: must not contain '..'")
    return value


def _volume(item: Any, i: int) -> dict[str, Any]:
    """One typed volume entry (`volumes.py` says what each kind is); the old
    `{host, container}` shape is read as an instance volume."""
    field = f"volumes[{i}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{field}: must be an object")
    if "kind" not in item and "host" in item:
        item = {"kind": "instance", "instance_path": item["host"], "path": item.get("container")}
    kind = item.get("kind")
    path = _abs_path(item.get("path"), f"{field}.path")
    read_only = item.get("read_only", False)
    if not isinstance(read_only, bool):
        raise BadRequest(f"{field}.read_only: must be a boolean")
    if kind == "instance":
        optional = item.get("optional", False)
        if not isinstance(optional, bool):
            raise BadRequest(f"{field}.optional: must be a boolean")
        host = _abs_path(item.get("instance_path"), f"{field}.instance_path")
        return {"kind": kind, "instance_path": host, "path": path, "optional": optional,
                "read_only": read_only}  # fmt: skip
    name = item.get("name")
    if not isinstance(name, str) or not name or "/" in name or "\0" in name:
        raise BadRequest(f"{field}.name: must be a volume name")
    if kind == "directory":
        volume_id = item.get("volume_id")
        if not isinstance(volume_id, str) or not JOB_ID_RE.match(volume_id):
            raise BadRequest(f"{field}.volume_id: must be a volume id")
        return {"kind": kind, "volume_id": volume_id, "name": name, "path": path}
    if kind == "network":
        device = _abs_path(item.get("device"), f"{field}.device")
        raw = item.get("device_aliases") or []
        if not isinstance(raw, list):
            raise BadRequest(f"{field}.device_aliases: must be a list of paths")
        aliases = [_abs_path(a, f"{field}.device_aliases") for a in raw]
        return {"kind": kind, "name": name, "device": device, "path": path,
                "read_only": read_only, "device_aliases": aliases}  # fmt: skip
    raise BadRequest(f"{field}.kind: must be 'network', 'directory' or 'instance'")


def _volumes(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("volumes") or []
    if not isinstance(value, list):
        raise BadRequest("volumes: must be a list")
    return [_volume(item, i) for i, item in enumerate(value)]


def _ssh_keys(body: dict[str, Any], field: str) -> list[str]:
    """Public keys, one `type base64 [comment]` line each: `ssh_keys` for the job's SSH server,
    `host_ssh_keys` for the host's own sshd while the job exists (ProxyJump to the job)."""
    keys = _str_list(body, field)
    for key in keys:
        if "\n" in key.strip() or len(key.split()) < 2 or not KEY_TYPE_RE.match(key.strip()):
            raise BadRequest(f"{field}: each key must be one OpenSSH public key line")
    return [k.strip() for k in keys]


def _matching(body: dict[str, Any], field: str, pattern: re.Pattern[str], what: str) -> Any:
    value = _opt_str(body, field)
    if value is not None and not pattern.match(value):
        raise BadRequest(f"{field}: must be {what}")
    return value


def _registry_auth(body: dict[str, Any]) -> dict[str, str] | None:
    """Credentials for pulling a private image; never logged, never on a command line."""
    value = body.get("registry_auth")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(value.get(k), str) and value.get(k) for k in ("username", "password")
    ):
        raise BadRequest("registry_auth: must be {username, password} strings")
    if any("\n" in value[k] or "\0" in value[k] for k in ("username", "password")):
        raise BadRequest("registry_auth: must not contain newlines")
    return {"username": value["username"], "password": value["password"]}


def _files(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The archives after the code in the start frame: where each goes, how long it is."""
    value = body.get("files") or []
    if not isinstance(value, list):
        raise BadRequest("files: must be a list")
    out = []
    for i, item in enumerate(value):
        path = item.get("path") if isinstance(item, dict) else None
        length = item.get("length") if isinstance(item, dict) else None
        if not isinstance(path, str) or not path or "\0" in path:
            raise BadRequest(f"files[{i}].path: must be a path")
        if ".." in path.split("/") or (path.startswith("~") and path != "~" and path[1] != "/"):
            raise BadRequest(f"files[{i}].path: must not contain '..' or name another user's ~")
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise BadRequest(f"files[{i}].length: must be a positive integer")
        out.append({"path": path, "length": length})
    return out


def _repo(body: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return gitclone.validate(body.get("repo"))
    except ValueError as e:
        raise BadRequest(str(e)) from None


def _runtime_fields(body: dict[str, Any]) -> dict[str, Any]:
    privileged = body.get("privileged", False)
    if not isinstance(privileged, bool):
        raise BadRequest("privileged: must be a boolean")
    return {
        "user": _matching(body, "user", USER_RE, "a user name or id, optionally :group"),
        "python": _matching(body, "python", PYTHON_RE, "a Python version like 3.12"),
        "privileged": privileged,
        "registry_auth": _registry_auth(body),
        "files": _files(body),
        "repo": _repo(body),
        "home_dir": _opt_str(body, "home_dir"),
    }


# The node list of the largest multi-node job: one short line per node.
MAX_HOSTFILE = 1 << 20


def validate_spec(body: Any) -> dict[str, Any]:
    """Return a normalized spec with defaults filled in; unknown fields are ignored."""
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object")
    job_id = body.get("id")
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise BadRequest("id: must be 1-128 characters of letters, digits, '_', '.', '-'")
    runtime = body.get("runtime", "process")
    if runtime not in ("process", "docker"):
        raise BadRequest("runtime: must be 'process' or 'docker'")
    name = body.get("name", job_id)
    if not isinstance(name, str):
        raise BadRequest("name: must be a string")
    spec = {
        "id": job_id,
        "name": name,
        "runtime": runtime,
        "commands": _str_list(body, "commands"),
        "env": _env(body),
        "working_dir": _opt_str(body, "working_dir"),
        "image": _opt_str(body, "image"),
        "shm_size_mib": _int(body, "shm_size_mib", None, 1),
        "ports": _ports(body),
        "volumes": _volumes(body),
        "gpus": _int(body, "gpus", 0, -1),
        "max_duration": _int(body, "max_duration", None, 1),
        "stop_duration": _int(body, "stop_duration", DEFAULT_STOP_DURATION, 0),
        "ssh_keys": _ssh_keys(body, "ssh_keys"),
        "host_ssh_keys": _ssh_keys(body, "host_ssh_keys"),
        "listen_port": _listen_port(body),
        "listen_port_search": _int(body, "listen_port_search", 1, 1),
        "host_label": _opt_str(body, "host_label"),
        **_runtime_fields(body),
        "mpi_hostfile": _opt_str(body, "mpi_hostfile"),
    }
    if len(spec["mpi_hostfile"] or "") > MAX_HOSTFILE:
        raise BadRequest(f"mpi_hostfile: must be at most {MAX_HOSTFILE} characters")
    if spec["listen_port_search"] > MAX_SEARCH:
        raise BadRequest(f"listen_port_search: must be <= {MAX_SEARCH}")
    if runtime == "process" and not spec["commands"]:
        raise BadRequest("commands: must not be empty for the process runtime")
    if runtime == "docker" and not spec["image"]:
        raise BadRequest("image: required for the docker runtime")
    return spec
