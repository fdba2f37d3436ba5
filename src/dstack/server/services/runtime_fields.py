"""The run fields that decide how a job runs on its host: which runtime, which image, as whom,
with which Python (docs/configuration.md, "Runtimes and default images").

A job runs in a container (the docker runtime) when it sets `image`, or a field only a
container can honour (`privileged`, `resources.shm_size`); without `image` such a job gets the
server's default image for its `python`/`nvcc`. Any other job runs as processes on the host,
where `user`, `python` and `nvcc` are checked against what the host's agent reported
(scheduler/runtime_fit.py) and refused in the plan when the host cannot honour them.
"""

from __future__ import annotations

import os
from typing import Any

from dstack.errors import ServerClientError
from dstack.server.scheduler.runtime_fit import RuntimeNeeds
from dstack.server.services.repos import check_repos

# Server settings: `{python}` is replaced with the run's `python` (DEFAULT_PYTHON without one).
DEFAULT_IMAGE_ENV = "DSTACK_SERVER_DEFAULT_IMAGE"
DEFAULT_CUDA_IMAGE_ENV = "DSTACK_SERVER_DEFAULT_CUDA_IMAGE"
DEFAULT_IMAGE = "python:{python}-slim"
DEFAULT_CUDA_IMAGE = "dstackai/base:py{python}-0.7-cuda-12.1"
DEFAULT_PYTHON = "3.12"


def container_fields(conf: Any) -> tuple[str, ...]:
    """The fields set that only the docker runtime can honour."""
    out = []
    if getattr(conf, "privileged", False):
        out.append("privileged")
    resources = getattr(conf, "resources", None)
    if resources is not None and getattr(resources, "shm_size", None) is not None:
        out.append("resources.shm_size")
    return tuple(out)


def default_image(python: str | None, nvcc: bool) -> str:
    env, fallback = (
        (DEFAULT_CUDA_IMAGE_ENV, DEFAULT_CUDA_IMAGE) if nvcc else (DEFAULT_IMAGE_ENV, DEFAULT_IMAGE)
    )
    template = os.environ.get(env) or fallback
    return template.replace("{python}", python or DEFAULT_PYTHON)


def container_image(conf: Any) -> str | None:
    """The image the job runs in; None: the process runtime."""
    image = getattr(conf, "image", None)
    if image:
        return image
    if container_fields(conf):
        return default_image(getattr(conf, "python", None), bool(getattr(conf, "nvcc", None)))
    return None


def runtime_needs(conf: Any) -> RuntimeNeeds:
    docker = container_image(conf) is not None
    return RuntimeNeeds(
        runtime="docker" if docker else "process",
        user=getattr(conf, "user", None),
        python=None if docker else getattr(conf, "python", None),
        nvcc=not docker and bool(getattr(conf, "nvcc", None)),
        container_fields=() if getattr(conf, "image", None) else container_fields(conf),
    )


# Fields not carried out yet: refused at plan time, never accepted and ignored.
_NOT_YET = {
    "docker": (
        "`docker: true` (Docker inside the job) is not supported: the server would have to "
        "hand the job the host's Docker engine, which is root on the host; set `image` and "
        "`privileged: true` and install Docker in the image instead"
    ),
}


def check_runtime_fields(conf: Any) -> None:
    """Refuse what this server cannot carry out, naming the field."""
    if getattr(conf, "docker", None):
        raise ServerClientError(_NOT_YET["docker"], field="configuration.docker")
    if getattr(conf, "registry_auth", None) and container_image(conf) is None:
        raise ServerClientError(
            "`registry_auth` is for pulling `image`, and this run sets no image (it runs as "
            "processes on the host); remove it or set `image`",
            field="configuration.registry_auth",
        )
    if getattr(conf, "nvcc", None) and getattr(conf, "image", None):
        raise ServerClientError(
            "`nvcc` picks the default CUDA image or needs nvcc on the host; with `image` it "
            "would have no effect: use an image that has nvcc and remove `nvcc`",
            field="configuration.nvcc",
        )
    check_repos(conf)
