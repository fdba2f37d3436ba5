"""A project's secrets on the wire: names always, a value only where the caller may read it."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

from dstack.errors import ServerClientError
from dstack.models.wire import WireModel

# The names `${{ secrets.NAME }}` can refer to (models/envs.py reads the same characters).
SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
# A secret is for tokens and keys, not files: a bound keeps one row from filling the database.
MAX_SECRET_VALUE = 64 * 1024


def check_name_or_refuse(value: str) -> str:
    if not SECRET_NAME_RE.match(value):
        raise ServerClientError(
            f"invalid secret name {value[:100]!r}: letters, digits, - and _, at most 100 "
            "characters",
            field="name",
        )
    return value


class Secret(WireModel):
    id: str
    name: str
    # Only `secrets/get` fills it (for managers and admins); lists never carry values.
    value: str | None = None


class GetSecretRequest(BaseModel):
    name: str


class CreateOrUpdateSecretRequest(BaseModel):
    """Both fields are checked by the server (`check`), not by the schema: FastAPI's schema
    errors echo the request body, which would put the value in the answer (and in any log)."""

    name: Any = None
    value: Any = None

    def check(self) -> tuple[str, str]:
        if not isinstance(self.name, str):
            raise ServerClientError("a secret needs a `name` (a string)", field="name")
        check_name_or_refuse(self.name)
        if not isinstance(self.value, str):
            raise ServerClientError(f"secret {self.name} needs a `value` (a string)", field="value")
        if len(self.value.encode()) > MAX_SECRET_VALUE:
            raise ServerClientError(
                f"the value of secret {self.name} is longer than {MAX_SECRET_VALUE} bytes",
                field="value",
            )
        return self.name, self.value


class DeleteSecretsRequest(BaseModel):
    secrets_names: list[str] = Field(min_length=1)
