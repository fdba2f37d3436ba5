"""`type: gateway` (§15) and the backend/certificate/load-balancer combinations it allows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from dstack.models.common import BackendType, ConfigModel, Tags, field_error

GATEWAY_BACKENDS = ("aws", "azure", "gcp", "kubernetes")


class LetsEncryptCertificate(ConfigModel):
    type: Literal["lets-encrypt"] = "lets-encrypt"


class ACMCertificate(ConfigModel):
    type: Literal["acm"]
    arn: str


class GCPCertificate(ConfigModel):
    type: Literal["gcp-cm"]
    name: str


def _certificate_kind(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"@{kind}" if kind in ("lets-encrypt", "acm", "gcp-cm") else None


Certificate = Annotated[
    Annotated[LetsEncryptCertificate, Tag("@lets-encrypt")]
    | Annotated[ACMCertificate, Tag("@acm")]
    | Annotated[GCPCertificate, Tag("@gcp-cm")],
    Discriminator(
        _certificate_kind,
        custom_error_type="invalid_certificate",
        custom_error_message="certificate type must be one of lets-encrypt, acm, gcp-cm",
    ),
]


class LoadBalancer(ConfigModel):
    type: Literal["alb"]


class GatewayConfiguration(ConfigModel):
    type: Literal["gateway"]
    name: str | None = None
    default: bool = False
    backend: BackendType
    region: str
    instance_type: str | None = None
    domain: str | None = None
    public_ip: bool = True
    load_balancer: LoadBalancer | None = None
    # `null` means HTTP only, so the default must be distinguishable from an explicit null.
    certificate: Certificate | None = Field(default_factory=LetsEncryptCertificate)
    replicas: int = Field(default=1, ge=1)
    tags: Tags | None = None

    @model_validator(mode="after")
    def _combinations(self) -> GatewayConfiguration:
        if self.backend not in GATEWAY_BACKENDS:
            raise field_error(
                "backend",
                f"gateways are not supported by backend {self.backend}"
                f" (supported: {', '.join(GATEWAY_BACKENDS)})",
            )
        cert = self.certificate.type if self.certificate is not None else None
        if self.load_balancer is not None and self.backend not in ("aws", "gcp"):
            raise field_error("load_balancer", f"load_balancer is not supported by {self.backend}")
        if not self.public_ip and self.backend not in ("aws", "gcp"):
            raise field_error("public_ip", f"private gateways are not supported by {self.backend}")
        if cert == "lets-encrypt" and not self.public_ip:
            raise field_error("certificate", "lets-encrypt certificates require `public_ip: true`")
        if cert == "lets-encrypt" and self.replicas != 1:
            raise field_error("certificate", "lets-encrypt certificates require `replicas: 1`")
        if cert == "acm" and self.backend != "aws":
            raise field_error("certificate", "acm certificates are only supported on aws")
        if cert == "gcp-cm" and self.backend != "gcp":
            raise field_error("certificate", "gcp-cm certificates are only supported on gcp")
        if cert == "gcp-cm" and self.load_balancer is None:
            raise field_error("load_balancer", "gcp-cm certificates require `load_balancer`")
        alb = self.load_balancer is not None
        if alb and self.backend == "aws" and cert not in ("acm", None):
            raise field_error(
                "certificate", "an aws load balancer needs an acm certificate or null"
            )
        if alb and self.backend == "gcp" and cert not in ("gcp-cm", None):
            raise field_error(
                "certificate", "a gcp load balancer needs a gcp-cm certificate or null"
            )
        return self
