"""Backends behind one compute interface (`base.Compute`). `create_backends` is the only place
that knows which exist; everything else looks them up by the type an instance row records and
reads their `capabilities`."""

from __future__ import annotations

from collections.abc import Callable

from dstack.server.backends.base import Compute
from dstack.server.settings import Settings


def create_backends(settings: Settings, decrypt: Callable[[str], str]) -> dict[str, Compute]:
    from dstack.server.backends.local import LocalBackend
    from dstack.server.backends.ssh.backend import SSHBackend

    backends: list[Compute] = []
    if settings.local_backend_enabled:
        backends.append(LocalBackend(settings.local_agent_home, settings.local_backend_project))
    backends.append(SSHBackend(settings.data_dir, decrypt))
    return {b.type: b for b in backends}
