"""Docker on a Slurm cluster's nodes. The server cannot look at a node before a job runs there,
so the cluster's configuration says whether its nodes run images (`docker: true`, a field of
this project); the agent's `docker info` on the node then has the last word."""

from __future__ import annotations

from typing import Any

from dstack.models.backends import SlurmCluster


def not_configured(cluster: str) -> str:
    """Why a cluster's nodes do not run images, and the user's two ways out (the plan's
    words for each offer of the cluster refused to a job with `image`)."""
    return (
        f"Slurm cluster {cluster} runs jobs with the process runtime only: set `docker: true` "
        "on the cluster in the server's config.yml if its compute nodes run a Docker engine "
        "the login user may use, or remove `image`"
    )


def host_info(cluster: SlurmCluster | None, name: str, node: str, info: dict[str, Any]) -> None:
    """Sets the instance's `docker` (the agent's report, kept only where the cluster is
    configured for it) and `docker_note` (why not: what a job with `image` fails with)."""
    if cluster is None or not cluster.docker:
        info["docker"] = False
        info["docker_note"] = not_configured(name)
    elif not info.get("docker"):
        info["docker_note"] = (
            f"cluster {cluster.name} sets `docker: true`, but `docker info` does not answer "
            f"for user {cluster.user} on node {node} (is the engine running there and "
            f"{cluster.user} in the `docker` group?)"
        )
