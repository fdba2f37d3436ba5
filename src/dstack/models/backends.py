"""Backend configurations: what `~/.dstack/server/config.yml` says a project's cloud backends
are (credentials, regions, network). Only the models: loading, encryption and the compute
behind them live in the server."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from dstack.models.common import TAG_KEY_RE, TAG_VALUE_RE, ConfigModel

AWS_REGION_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")


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


# Every backend type config.yml can configure; grows as backends are added.
AnyBackendConfig = AWSBackendConfig  # a discriminated union once there are two
CONFIGURABLE_BACKENDS: tuple[str, ...] = ("aws",)
