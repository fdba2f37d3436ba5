"""Backend configurations: what `~/.dstack/server/config.yml` says a project's cloud backends
are (credentials, regions, network). Only the models: loading, encryption and the compute
behind them live in the server."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from dstack.models.common import TAG_KEY_RE, TAG_VALUE_RE, ConfigModel

AWS_REGION_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
# Slurm names (clusters, partitions, Unix users) as they may appear in a shell command.
SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
HOST_KEY_RE = re.compile(
    r"^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( .*)?$"
)


class AWSDefaultCreds(ConfigModel):
    """The credentials boto3 finds by itself (environment, shared files, instance role)."""

    type: Literal["default"] = "default"


class AWSAccessKeyCreds(ConfigModel):
    type: Literal["access_key"] = "access_key"
    access_key: str = Field(min_length=1)
    secret_key: str = Field(min_length=1)


AWSCreds = Annotated[AWSDefaultCreds | AWSAccessKeyCreds, Field(discriminator="type")]


class AWSOSImage(ConfigModel):
    """An AMI chosen by name (the newest match), optionally from one owner account."""

    name: str = Field(min_length=1)
    owner: str = "self"
    user: str = "ubuntu"


class AWSOSImages(ConfigModel):
    cpu: AWSOSImage | None = None
    nvidia: AWSOSImage | None = None


class AWSBackendConfig(ConfigModel):
    type: Literal["aws"] = "aws"
    creds: AWSCreds = Field(default_factory=AWSDefaultCreds)
    regions: list[str] | None = Field(default=None, min_length=1)
    vpc_name: str | None = None
    vpc_ids: dict[str, str] | None = None
    default_vpcs: bool | None = None
    public_ips: bool = True
    tags: dict[str, str] | None = None
    os_images: AWSOSImages | None = None

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str] | None) -> list[str] | None:
        for region in value or ():
            if not AWS_REGION_RE.match(region):
                raise ValueError(f"'{region}' is not an AWS region name (like us-east-1)")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for k, v in (value or {}).items():
            if not TAG_KEY_RE.match(k) or k.lower().startswith("dstack"):
                raise ValueError(f"invalid tag key '{k}' (letters, digits, _ and -; not dstack*)")
            if not TAG_VALUE_RE.match(str(v)):
                raise ValueError(f"invalid value of tag '{k}'")
        return value

    @model_validator(mode="after")
    def _vpc(self) -> AWSBackendConfig:
        if self.vpc_name and self.vpc_ids:
            raise ValueError("set either vpc_name or vpc_ids, not both")
        if self.vpc_ids and self.regions:
            missing = [r for r in self.regions if r not in self.vpc_ids]
            if missing and not self.default_vpcs:
                raise ValueError(
                    f"vpc_ids has no VPC for region(s) {', '.join(missing)}; add them or set "
                    "default_vpcs: true"
                )
        return self

    def uses_default_vpcs(self) -> bool:
        """Without a named VPC the region's default VPC is used, unless it is switched off."""
        if self.default_vpcs is not None:
            return self.default_vpcs
        return not (self.vpc_name or self.vpc_ids)

    def split_secrets(self, mask: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the configuration with every credential value masked, the credentials): the masked
        form keeps the kind of credentials and which fields they have."""
        data = self.model_dump(mode="json", exclude_none=True)
        creds = data.pop("creds", {})
        data["creds"] = {k: (v if k == "type" else mask) for k, v in creds.items()}
        return data, creds

    @staticmethod
    def join_secrets(data: dict[str, Any], secrets: dict[str, Any]) -> dict[str, Any]:
        return {**data, "creds": secrets}


class SlurmPrivateKey(ConfigModel):
    """The key the server logs in to the login node with: a file on the server (read at each
    start) or the key itself (stored encrypted, never shown)."""

    path: str | None = Field(default=None, min_length=1)
    content: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> SlurmPrivateKey:
        if (self.path is None) == (self.content is None):
            raise ValueError("set exactly one of private_key.path and private_key.content")
        return self


class SlurmGPUPartitions(ConfigModel):
    """Partitions whose nodes have GPUs of one model (named here when their GRES do not)."""

    gpu: str = Field(min_length=1)
    partitions: list[str] = Field(min_length=1)


class SlurmCluster(ConfigModel):
    name: str
    hostname: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1)
    private_key: SlurmPrivateKey
    # The login node's OpenSSH public host key (`ssh-ed25519 AAAA...`); without it the key
    # is trusted on first use and kept for the server process.
    host_key: str | None = None
    gpu_partitions: list[SlurmGPUPartitions] = Field(default_factory=list)
    cpu_partitions: list[str] = Field(default_factory=list)
    # Ours (the original has no such field): the compute nodes run a Docker engine the login
    # user may use, so jobs with `image` run there in containers. The server cannot know it
    # before a node runs a job; the agent's `docker info` on the node confirms it then.
    docker: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SLURM_NAME_RE.match(value):
            raise ValueError(
                f"invalid cluster name {value!r} (letters, digits, '.', '-' and '_', at most 64)"
            )
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not SLURM_NAME_RE.match(value):
            raise ValueError(f"invalid user name {value!r}")
        return value

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str | None) -> str | None:
        if value is not None and not HOST_KEY_RE.match(value.strip()):
            raise ValueError(
                "host_key must be an OpenSSH public key line, like 'ssh-ed25519 AAAA...'"
            )
        return value.strip() if value else value

    @field_validator("cpu_partitions")
    @classmethod
    def _partitions(cls, value: list[str]) -> list[str]:
        for p in value:
            if not SLURM_NAME_RE.match(p):
                raise ValueError(f"invalid partition name {p!r}")
        return value

    @model_validator(mode="after")
    def _disjoint(self) -> SlurmCluster:
        seen: set[str] = set(self.cpu_partitions)
        for group in self.gpu_partitions:
            for p in group.partitions:
                if not SLURM_NAME_RE.match(p):
                    raise ValueError(f"invalid partition name {p!r}")
                if p in seen:
                    raise ValueError(f"partition {p} is listed twice")
                seen.add(p)
        return self

    def partitions(self) -> list[str]:
        """The partitions this server may use; empty: all the cluster has."""
        return [p for g in self.gpu_partitions for p in g.partitions] + self.cpu_partitions


class SlurmBackendConfig(ConfigModel):
    type: Literal["slurm"] = "slurm"
    clusters: list[SlurmCluster] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> SlurmBackendConfig:
        names = [c.name for c in self.clusters]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate cluster name(s): {', '.join(dup)}")
        return self

    def split_secrets(self, mask: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Private keys given inline are the secrets, by cluster name."""
        data = self.model_dump(mode="json", exclude_none=True)
        keys: dict[str, str] = {}
        for cluster in data["clusters"]:
            key = cluster["private_key"]
            if "content" in key:
                keys[cluster["name"]] = key["content"]
                key["content"] = mask
        return data, {"private_keys": keys}

    @staticmethod
    def join_secrets(data: dict[str, Any], secrets: dict[str, Any]) -> dict[str, Any]:
        keys = secrets.get("private_keys") or {}
        out = {**data, "clusters": []}
        for cluster in data.get("clusters") or []:
            cluster = dict(cluster)
            if cluster["name"] in keys:
                cluster["private_key"] = {"content": keys[cluster["name"]]}
            out["clusters"].append(cluster)
        return out


# Every backend type config.yml can configure; grows as backends are added.
def _backend_tag(value: Any) -> str:
    """`@aws`, `@slurm`: labels the error formatter leaves out of a field's path."""
    btype = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"@{btype}"


AnyBackendConfig = Annotated[
    Annotated[AWSBackendConfig, Tag("@aws")] | Annotated[SlurmBackendConfig, Tag("@slurm")],
    Discriminator(_backend_tag),
]
BACKEND_CONFIG_CLASSES: dict[str, type[AWSBackendConfig] | type[SlurmBackendConfig]] = {
    "aws": AWSBackendConfig,
    "slurm": SlurmBackendConfig,
}
CONFIGURABLE_BACKENDS: tuple[str, ...] = tuple(BACKEND_CONFIG_CLASSES)
