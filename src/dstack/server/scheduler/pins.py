"""`instances`: a run pinned to named existing instances (configuration.md §5): only those
instances may take it, and nothing is provisioned for it. Pure, like the rest of placement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class Pinnable(Protocol):
    name: str
    fleet_name: str
    hostname: str | None
    instance_num: int


@dataclass(frozen=True)
class InstancePin:
    """One selector: `name`, `hostname` (host or IP), or `fleet` + `instance` (its number)."""

    name: str | None = None
    hostname: str | None = None
    fleet: str | None = None
    instance: int | None = None

    @classmethod
    def from_selector(cls, selector: Any) -> InstancePin:
        return cls(selector.name, selector.hostname, selector.fleet, selector.instance)

    def matches(self, inst: Pinnable) -> bool:
        if self.name is not None:
            return inst.name == self.name
        if self.hostname is not None:
            return inst.hostname == self.hostname
        return (self.fleet is None or inst.fleet_name == self.fleet) and (
            self.instance is None or inst.instance_num == self.instance
        )

    def label(self) -> str:
        if self.name is not None:
            return self.name
        if self.hostname is not None:
            return f"hostname {self.hostname}"
        return f"fleet {self.fleet} instance {self.instance}"


def pinned_out(pins: tuple[InstancePin, ...] | None, inst: Pinnable) -> str | None:
    """Why `inst` may not take a pinned run; None when it may (or the run is not pinned)."""
    if pins is None or any(p.matches(inst) for p in pins):
        return None
    return f"{inst.name}: not one of the run's `instances`"


def unmatched(pins: tuple[InstancePin, ...] | None, instances: list[Pinnable]) -> list[str]:
    """Selectors that match no instance of the project (refused at plan: a typo would
    otherwise leave the run waiting forever)."""
    return [p.label() for p in pins or () if not any(p.matches(i) for i in instances)]
