"""`~/.dstack/server/config.yml`: which projects the server has and each one's cloud backends,
in the original's format, so a user's file carries over. Only the models and their rules; the
server loads the file, stores the secrets encrypted and builds the backends."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dstack.models.backends import CONFIGURABLE_BACKENDS, AnyBackendConfig
from dstack.models.common import BACKEND_IDS, ConfigModel, field_error
from dstack.models.names import PROJECT_NAME_RE, name_problem
from dstack.models.wire import WireModel

# The project-name rule of the original (letters, digits, `-` and `_`, at most 50).


def unsupported_backend_message(btype: Any) -> str:
    supported = ", ".join(CONFIGURABLE_BACKENDS)
    if btype in BACKEND_IDS:
        return f"backend type {btype} is not supported by this server yet (supported: {supported})"
    return f"unknown backend type {btype!r} (supported: {supported})"


class ProjectConfig(ConfigModel):
    name: str
    backends: list[AnyBackendConfig] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not PROJECT_NAME_RE.fullmatch(value):
            raise ValueError(name_problem("project", value, PROJECT_NAME_RE))
        return value

    @field_validator("backends", mode="before")
    @classmethod
    def _types(cls, value: Any) -> Any:
        """Say which types this server configures before pydantic says "Input should be
        'aws'", and refuse a second backend of one type (a project has one of each)."""
        if not isinstance(value, list):
            return value
        seen: set[str] = set()
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            btype = item.get("type")
            if btype is None:
                raise field_error(f"{i}", "a backend needs a `type`")
            if btype not in CONFIGURABLE_BACKENDS:
                raise field_error(f"{i}.type", unsupported_backend_message(btype))
            if btype in seen:
                raise field_error(f"{i}.type", f"duplicate backend type {btype} in this project")
            seen.add(btype)
        return value


# A key name is part of every value it encrypts (`enc:aes:<name>:...`), so no colon in it.
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class EncryptionKeyConfig(ConfigModel):
    """`type: aes` (AES-256-GCM; `name`, and `secret`: 32 random bytes in base64, as
    `openssl rand -base64 32` prints) or `type: identity` (no encryption: values written while
    it is the first key are stored in clear)."""

    type: Literal["aes", "identity"]
    name: str | None = None
    secret: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not KEY_NAME_RE.match(value):
            raise ValueError(f"invalid key name {value!r} (letters, digits, . _ -, at most 64)")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the secret must be base64 (openssl rand -base64 32)") from None
        if len(raw) != 32:
            raise ValueError(
                f"the secret must be 32 bytes in base64, got {len(raw)} bytes "
                "(openssl rand -base64 32)"
            )
        return value.strip()

    @model_validator(mode="after")
    def _fields(self) -> EncryptionKeyConfig:
        if self.type == "aes":
            for field in ("name", "secret"):
                if getattr(self, field) is None:
                    raise field_error(field, f"an aes key needs a `{field}`")
        else:
            for field in ("name", "secret"):
                if getattr(self, field) is not None:
                    raise field_error(field, f"an identity key has no `{field}`")
        return self

    @property
    def key_name(self) -> str:
        return self.name or "noname"


class EncryptionConfig(ConfigModel):
    """The first key encrypts new values; every key decrypts (rotation: put the new key first
    and keep the old one until nothing is encrypted with it)."""

    keys: list[EncryptionKeyConfig] = Field(default_factory=list)

    @field_validator("keys", mode="before")
    @classmethod
    def _types(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict) and item.get("type") not in ("aes", "identity"):
                    raise field_error(
                        f"{i}.type",
                        f"unknown key type {item.get('type')!r} (supported: aes, identity)",
                    )
        return value

    @model_validator(mode="after")
    def _unique(self) -> EncryptionConfig:
        seen: set[str] = set()
        for i, key in enumerate(self.keys):
            name = key.key_name
            if name in seen:
                raise field_error(f"keys.{i}.name", f"duplicate encryption key name {name}")
            seen.add(name)
        return self


class ServerConfig(ConfigModel):
    projects: list[ProjectConfig] = Field(default_factory=list)
    encryption: EncryptionConfig | None = None

    def encryption_keys(self) -> list[EncryptionKeyConfig]:
        return list(self.encryption.keys) if self.encryption is not None else []

    @model_validator(mode="after")
    def _unique(self) -> ServerConfig:
        seen: set[str] = set()
        for i, project in enumerate(self.projects):
            if project.name in seen:
                raise field_error(f"projects.{i}.name", f"duplicate project name {project.name}")
            seen.add(project.name)
        return self


class BackendInfo(WireModel):
    """One of a project's backends as the API shows it: secrets redacted, and whether the
    server could set it up (`reason` says why not)."""

    name: str
    type: str
    config: dict[str, Any] = Field(default_factory=dict)
    status: Literal["ok", "error"] = "ok"
    reason: str | None = None
    # Configured for the whole server (the server's own machine, SSH hosts), not per project.
    server_wide: bool = False


class BackendYAML(WireModel):
    name: str
    config_yaml: str
