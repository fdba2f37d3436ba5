"""Backends behind one compute interface (`base.Compute`). This package is the only place that
knows which exist: `create_backends` builds the server-wide ones (this machine, SSH hosts) and
each project's from `config.yml` into a `BackendRegistry`; everything else looks them up by the
type an instance row records (and its project) and reads their `capabilities`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from dstack.models.backends import AnyBackendConfig
from dstack.server.backends.base import Compute
from dstack.server.backends.registry import BackendRegistry, BackendSpec, Factory, configure
from dstack.server.settings import Settings

DEFAULT_CHECK_TIMEOUT = 20.0


def _aws() -> Callable[..., Compute]:
    from dstack.server.backends.aws import create_aws

    return create_aws  # type: ignore[return-value]


def _slurm() -> Callable[..., Compute]:
    from dstack.server.backends.slurm import create_slurm

    return create_slurm  # type: ignore[return-value]


# Backend type -> a function giving its factory `(project_name, config, data_dir, decrypt) ->
# Compute`, imported only when a project configures that type (a cloud SDK is heavy to import).
FACTORIES: dict[str, Callable[[], Factory]] = {"aws": _aws, "slurm": _slurm}


def factory_of(btype: str) -> Callable[..., Compute]:
    loader = FACTORIES.get(btype)
    if loader is None:
        raise ValueError(f"backend type {btype} is not supported by this server")
    return loader()


def shared_backends(settings: Settings, decrypt: Callable[[str], str]) -> list[Compute]:
    """The backends every project sees (the local one still serves only its own project)."""
    from dstack.server.backends.local import LocalBackend
    from dstack.server.backends.ssh.backend import SSHBackend

    backends: list[Compute] = []
    if settings.local_backend_enabled:
        backends.append(LocalBackend(settings.local_agent_home, settings.local_backend_project))
    backends.append(SSHBackend(settings.data_dir, decrypt))
    return backends


def check_timeout() -> float:
    raw = os.environ.get("DSTACK_SERVER_BACKEND_CHECK_TIMEOUT")
    return float(raw) if raw else DEFAULT_CHECK_TIMEOUT


def _summary(config: AnyBackendConfig) -> str:
    clusters = getattr(config, "clusters", None)
    if clusters:
        return "clusters " + ", ".join(c.name for c in clusters)
    regions = getattr(config, "regions", None)
    return ", ".join(regions) if regions else "all regions"


async def configure_projects(
    registry: BackendRegistry,
    configured: Iterable[tuple[str, str, AnyBackendConfig]],
    timeout: float | None = None,
) -> None:
    """Add each project's backends, `(project_id, project_name, config with decrypted creds)`;
    one whose check fails is left out with its reason (`registry.failures`)."""
    specs = [
        BackendSpec(pid, pname, conf.type, conf, _summary(conf)) for pid, pname, conf in configured
    ]

    def bound(btype: str) -> Factory:
        make = factory_of(btype)
        return lambda name, conf: make(name, conf, registry.data_dir, registry.decrypt)

    await configure(registry, specs, bound, timeout if timeout is not None else check_timeout())


async def create_backends(
    settings: Settings,
    decrypt: Callable[[str], str],
    configured: Iterable[tuple[str, str, AnyBackendConfig]] = (),
    timeout: float | None = None,
) -> BackendRegistry:
    registry = BackendRegistry(
        shared=shared_backends(settings, decrypt), data_dir=settings.data_dir, decrypt=decrypt
    )
    await configure_projects(registry, configured, timeout)
    return registry
