"""Can this host run the job's runtime fields as written? (`user`, `python`, `nvcc` on the
process runtime.) A host that cannot is refused in the plan, naming the field, the host and
what it has, rather than the job running as root, with the host's own Python, and so on.

The host's side comes from its agent's report (agent/hostinfo.py `runtime_facts`); a host that
has not reported yet (still starting, an older agent) is not refused here: the agent checks
again when the job starts and fails it with the same kind of message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RuntimeNeeds:
    """What the job asks of the host's runtime. `container_fields`: fields that need the
    docker runtime (the job then runs in a container even without `image`)."""

    runtime: str = "process"  # "process" | "docker"
    user: str | None = None
    python: str | None = None
    nvcc: bool = False
    container_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostFacts:
    agent_user: str | None = None
    agent_uid: int | None = None
    agent_root: bool | None = None
    pythons: tuple[str, ...] | None = None
    uv: bool | None = None
    nvcc: bool | None = None

    @classmethod
    def from_host_info(cls, info: Mapping[str, Any] | None) -> HostFacts | None:
        if not info or "agent_root" not in info:
            return None
        pythons = info.get("pythons")
        return cls(
            agent_user=info.get("agent_user"),
            agent_uid=info.get("agent_uid"),
            agent_root=info.get("agent_root"),
            pythons=tuple(pythons) if isinstance(pythons, list) else None,
            uv=info.get("uv"),
            nvcc=info.get("nvcc"),
        )


def runtime_refusal(needs: RuntimeNeeds, facts: HostFacts | None, host: str) -> str | None:
    """Why HOST cannot run the job's runtime fields (None: it can, or it is not known yet)."""
    if facts is None or needs.runtime != "process":
        return None
    user = (needs.user or "").partition(":")[0]
    itself = (facts.agent_user, str(facts.agent_uid))
    if user and facts.agent_root is False and user not in itself:
        return (
            f"`user: {needs.user}` needs the agent on host {host} to run as root to switch "
            f"users (it runs as {facts.agent_user}); set `user: {facts.agent_user}` or run "
            "the agent as root"
        )
    pythons = facts.pythons
    if needs.python and pythons is not None and needs.python not in pythons and not facts.uv:
        return (
            f"`python: {needs.python}`: host {host} has python {', '.join(pythons) or 'none'} "
            f"on PATH and no uv; install python{needs.python} there, or set `image`"
        )
    if needs.nvcc and facts.nvcc is False:
        return (
            f"`nvcc`: host {host} has no nvcc (the CUDA compiler) on PATH; install the CUDA "
            "toolkit there, or set `image` to a CUDA development image"
        )
    return None


def no_docker_reason(needs: RuntimeNeeds | None) -> str:
    """The plan's words for a host without a Docker engine, naming what needs one."""
    if needs is not None and needs.container_fields:
        fields = ", ".join(f"`{f}`" for f in needs.container_fields)
        verb = "needs" if len(needs.container_fields) == 1 else "need"
        return f"{fields} {verb} the docker runtime; the host has no Docker engine"
    return "no Docker engine (the configuration sets `image`)"
