"""Errors shared by every layer.

They live outside `models/` so that the CLI, the server and the SDK can catch them without
importing pydantic; each carries enough to print one clear line for the user.
"""

from __future__ import annotations


class DstackError(Exception):
    """Base of every error the product raises on purpose (never a bug)."""


class ConfigurationError(DstackError):
    """A configuration (file or mapping) is invalid.

    `path` is the dotted field path (`resources.gpu`), `file` and `line` locate it in the YAML
    source when the configuration came from a file. `str()` gives the one-line message the CLI
    prints, e.g. `train.dstack.yml:5: resources.gpu: unknown memory unit 'XB' in 'A100:40XB'`.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.file = file
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.message}"


class ClientError(DstackError):
    """The server refused a request or could not be reached; the message is user-facing."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.message = message
        self.status_code = status_code
        super().__init__(message)


class ServerClientError(DstackError):
    """A bad request found by the server; routers answer HTTP 400 with `detail`."""

    def __init__(self, message: str, *, field: str | None = None, code: str = "error") -> None:
        self.message = message
        self.field = field
        self.code = code
        super().__init__(message)


class ResourceNotExistsError(ServerClientError):
    """A named run, fleet, volume or project is missing; routers answer 400 with this text."""


class ResourceExistsError(ServerClientError):
    """A name is taken by an active resource."""


class StaleResourceError(ServerClientError):
    """A plan was made against an older version of the resource than the server now holds
    (someone else changed it in between): answered 409, nothing applied."""


def stale_plan_message(kind: str, name: str, planned: int, current: int) -> str:
    return (
        f"{kind.capitalize()} {name} changed since the plan; re-run apply or use --force "
        f"(the plan saw generation {planned}, it is at {current} now)"
    )
