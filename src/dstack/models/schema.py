"""JSON Schema of the configuration language (`dstack schema`), for editors and CI linters.

Built on demand from the same models that validate, so the two cannot drift apart. The
shorthand forms (`gpu: A100:2`, `ports: ["8080:80"]`) are described by the `Shorthand` and
`WithJsonSchema` annotations on the fields, since pydantic only sees their normalised types.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from dstack.models.configurations import AnyConfiguration

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@lru_cache(maxsize=1)
def _cached() -> dict[str, Any]:
    adapter = TypeAdapter(Annotated[AnyConfiguration, Field(discriminator="type")])
    schema = adapter.json_schema(mode="validation")
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "dstack configuration"
    return schema


def build_schema() -> dict[str, Any]:
    """A fresh copy, so callers may annotate it without touching the cache."""
    import copy

    return copy.deepcopy(_cached())
