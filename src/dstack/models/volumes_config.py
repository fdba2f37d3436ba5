"""`type: volume` (§14). One model for all backends; `backend` decides which fields apply.

A volume is either a network volume (`backend`: created in that cloud) or a directory volume
(`fleet`: a directory on the one host of that SSH or local fleet that first uses it). Exactly
one of the two is given; a directory volume has nothing to size or place, so it takes only
`name`, `fleet`, `auto_cleanup_duration` and `tags`.

A field that the chosen backend does not know is reported exactly like an unknown key
("Extra inputs are not permitted"), which is what a per-backend model would say.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from dstack.models.common import ConfigModel, IdleDuration, Memory, Tags, field_error

VolumeBackend = Literal["aws", "gcp", "runpod", "kubernetes", "daytona", "lium"]

_COMMON = {"type", "name", "backend", "auto_cleanup_duration", "tags"}
_BACKEND_FIELDS: dict[str, set[str]] = {
    "aws": {"region", "availability_zone", "size", "volume_id"},
    "gcp": {"region", "availability_zone", "size", "volume_id"},
    "runpod": {"region", "size", "volume_id"},
    "kubernetes": {
        "region",
        "size",
        "claim_name",
        "storage_class_name",
        "access_modes",
        "read_only",
    },
    "daytona": {"volume_id"},
    "lium": {"volume_id"},
}
_REGION_REQUIRED = {"aws", "gcp", "runpod"}
_DIRECTORY_FIELDS = {"type", "name", "fleet", "auto_cleanup_duration", "tags"}


class VolumeConfiguration(ConfigModel):
    type: Literal["volume"]
    name: str | None = None
    backend: VolumeBackend | None = None
    fleet: str | None = None
    region: str | None = None
    availability_zone: str | None = None
    size: Memory | None = None
    volume_id: str | None = None
    claim_name: str | None = None
    storage_class_name: str | None = None
    access_modes: list[str] | None = None
    read_only: bool | None = None
    auto_cleanup_duration: IdleDuration = None
    tags: Tags | None = None

    @model_validator(mode="before")
    @classmethod
    def _disk_as_size(cls, data: Any) -> Any:
        """`resources: {disk: 500GB}` is the user guide's way to give the size: read it as
        `size`, the reference's field, rather than refuse the guide's own example."""
        if not isinstance(data, dict) or "resources" not in data:
            return data
        resources = data["resources"]
        if not isinstance(resources, dict) or set(resources) != {"disk"}:
            raise field_error("resources", "a volume takes only `resources: {disk: SIZE}`")
        if data.get("size") is not None:
            raise field_error("resources", "give the size once: `size` or `resources.disk`")
        disk = resources["disk"]
        if isinstance(disk, dict):  # the long form `disk: {size: 500GB}`
            disk = disk.get("size")
        if not isinstance(disk, (str, int, float)) or ".." in str(disk):
            raise field_error("resources", "`resources.disk` of a volume is one size, e.g. 500GB")
        out = {k: v for k, v in data.items() if k != "resources"}
        out["size"] = disk
        return out

    @property
    def is_directory(self) -> bool:
        return self.fleet is not None

    @model_validator(mode="after")
    def _backend_fields(self) -> VolumeConfiguration:
        # Judged by value, not by presence: a dumped configuration lists every field as null.
        given = {f for f in self.model_fields_set if getattr(self, f) is not None}
        if self.backend is not None and self.fleet is not None:
            raise field_error(
                "fleet",
                "give `backend` (a network volume) or `fleet` (a directory volume), not both",
            )
        if self.fleet is not None:
            for field in sorted(given - _DIRECTORY_FIELDS):
                raise field_error(
                    field, "Extra inputs are not permitted (a directory volume, `fleet`)"
                )
            return self
        if self.backend is None:
            raise field_error(
                "backend",
                "Field required (a network volume names its `backend`; a directory volume "
                "on an SSH or the local fleet names its `fleet` instead)",
            )
        allowed = _COMMON | _BACKEND_FIELDS[self.backend]
        for field in sorted(given - allowed):
            raise field_error(field, f"Extra inputs are not permitted (backend {self.backend})")
        if self.backend in _REGION_REQUIRED and self.region is None:
            raise field_error("region", "Field required")
        if self.backend == "kubernetes":
            if self.region is None:
                self.region = ""
            if self.access_modes is None:
                self.access_modes = ["ReadWriteOnce"]
            if self.read_only is None:
                self.read_only = False
        return self
