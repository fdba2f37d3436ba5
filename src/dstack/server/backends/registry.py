"""Which backends each project has. Server-wide backends (the server's own machine, SSH hosts)
are in every project's view (a backend still refuses a project it does not serve, through
`Compute.serves`); a backend from `config.yml` belongs to one project, because two projects'
clouds have different credentials and regions.

Only the compute interface is imported here: services read the registry without knowing any
backend's implementation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dstack.server.backends.base import BackendError, Compute


@dataclass(frozen=True)
class ConfiguredBackend:
    """A project backend the server set up, with what `dstack server` prints about it."""

    project_id: str
    project_name: str
    compute: Compute
    summary: str = ""  # e.g. the regions


@dataclass(frozen=True)
class BackendFailure:
    """A project backend the server could not set up, and why (shown at start and by the API)."""

    project_id: str
    project_name: str
    type: str
    reason: str


@dataclass
class BackendRegistry:
    shared: list[Compute] = field(default_factory=list)
    configured: list[ConfiguredBackend] = field(default_factory=list)
    failures: list[BackendFailure] = field(default_factory=list)
    # What a project backend's factory gets besides its configuration: the server's data
    # directory and how to decrypt what it stored (the project's SSH key).
    data_dir: Path | None = None
    decrypt: Callable[[str], str] | None = None

    def get(self, btype: str | None, project_id: str | None) -> Compute | None:
        """The backend of type `btype` in the project's view (None: it has none)."""
        return self.for_project(project_id).get(btype or "")

    def for_project(self, project_id: str | None) -> dict[str, Compute]:
        out = {b.type: b for b in self.shared}
        out.update(
            {c.compute.type: c.compute for c in self.configured if c.project_id == project_id}
        )
        return out

    def types_for(self, project_id: str | None) -> list[str]:
        return sorted(self.for_project(project_id))

    def all(self) -> list[Compute]:
        """Every backend once (the sweeper's inventory, closing at shutdown)."""
        return [*self.shared, *(c.compute for c in self.configured)]

    def failure(self, btype: str, project_id: str) -> BackendFailure | None:
        return next(
            (f for f in self.failures if f.type == btype and f.project_id == project_id), None
        )

    def describe(self) -> list[str]:
        """What `dstack server` prints: one line of backends it set up, one per failure."""
        shared = []
        for b in self.shared:
            scope = (
                "all projects" if b.projects is None else "project " + ", ".join(sorted(b.projects))
            )
            shared.append(f"{b.type} ({scope})")
        for c in self.configured:
            where = f"project {c.project_name}" + (f": {c.summary}" if c.summary else "")
            shared.append(f"{c.compute.type} ({where})")
        lines = ["Backends: " + ("; ".join(shared) or "none")]
        lines += [
            f"Backend {f.type} (project {f.project_name}): not configured: {f.reason}"
            for f in self.failures
        ]
        return lines


Factory = Callable[[str, object], Compute]


@dataclass(frozen=True)
class BackendSpec:
    """One project backend to set up: the configuration carries decrypted credentials."""

    project_id: str
    project_name: str
    type: str
    config: object
    summary: str = ""


async def configure(
    registry: BackendRegistry,
    specs: Iterable[BackendSpec],
    factory_of: Callable[[str], Factory],
    timeout: float,
) -> None:
    """Build and check every project backend concurrently; one that cannot be built, fails its
    check or does not answer within `timeout` is left out and remembered with its reason."""
    specs = list(specs)
    results = await asyncio.gather(*(_one(s, factory_of, timeout) for s in specs))
    for spec, result in zip(specs, results, strict=True):
        if isinstance(result, Compute):
            if result.projects is None:
                # A project's backend serves that project only, whatever it says itself.
                result.projects = frozenset({spec.project_name})
            registry.configured.append(
                ConfiguredBackend(spec.project_id, spec.project_name, result, spec.summary)
            )
        else:
            registry.failures.append(
                BackendFailure(spec.project_id, spec.project_name, spec.type, result)
            )


async def _one(
    spec: BackendSpec, factory_of: Callable[[str], Factory], timeout: float
) -> Compute | str:
    try:
        compute = factory_of(spec.type)(spec.project_name, spec.config)
    except Exception as e:  # noqa: BLE001 - any failure to build is the operator's to read
        return _reason(e)
    try:
        await asyncio.wait_for(compute.check(), timeout)
    except asyncio.TimeoutError:
        await _close(compute)
        return f"the backend's check did not answer within {timeout:g} s"
    except Exception as e:  # noqa: BLE001
        await _close(compute)
        return _reason(e)
    return compute


def _reason(e: BaseException) -> str:
    if isinstance(e, BackendError):
        return str(e) or type(e).__name__
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def _close(compute: Compute) -> None:
    close: Callable[[], Awaitable[None]] = compute.close
    try:
        await close()
    except Exception:  # noqa: BLE001 - closing a backend that failed its check is best effort
        return
