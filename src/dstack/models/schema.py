"""JSON Schema of the configuration language (`dstack schema`), for editors and CI linters.

Built on demand from the same models that validate, so the two cannot drift apart. The
shorthand forms (`gpu: A100:2`, `ports: ["8080:80"]`) are described by the `Shorthand` and
`WithJsonSchema` annotations on the fields, since pydantic only sees their normalised types;
the few mapping forms that before-validators complete (`nodes: {max: 4}`, `count` for
`replicas`, a list under service `replicas`, a volume's `resources.disk`) are relaxed here.
The schema may accept a little more than the models (it does not check grammars or
cross-field rules), never less, except that YAML numbers are only accepted where the models
keep numbers.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from dstack.models.configurations import AnyConfiguration

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_RANGE_KEYS = {"min": {}, "max": {}}


def _relax(defs: dict[str, Any]) -> None:
    """Admit the mapping forms that before-validators complete or rename."""
    for name in ("FleetNodes", "FileMapping", "DiskSpec", "CPUSpec"):
        defs[name].pop("required", None)
    for name in ("DiskSpec", "CPUSpec"):
        defs[name]["properties"].update(copy.deepcopy(_RANGE_KEYS))
    group = defs["ReplicaGroup"]["properties"]
    group["count"] = copy.deepcopy(group["replicas"])
    defs["VolumeConfiguration"]["properties"]["resources"] = {  # the guide's `disk` for `size`
        "type": "object",
        "properties": {"disk": {}},
        "additionalProperties": False,
    }
    service = defs["ServiceConfiguration"]["properties"]
    service["replicas"] = {
        "anyOf": [
            service["replicas"],
            {"type": "array", "items": {"$ref": "#/$defs/ReplicaGroup"}},
        ]
    }


def _rename_ranges(schema: dict[str, Any]) -> dict[str, Any]:
    """Give the generic `Range[...]` definitions readable names (`IntRange`, `MemoryRange`)."""
    defs = schema["$defs"]
    renames = {}
    for name in list(defs):
        if name.startswith("Range_"):
            new = "IntRange" if "_int_" in name else "MemoryRange"
            renames[name] = new
            defs[new] = defs.pop(name)
            defs[new]["title"] = new
    text = json.dumps(schema)
    for old, new in renames.items():
        text = text.replace(f'"#/$defs/{old}"', f'"#/$defs/{new}"')
    return json.loads(text)


@lru_cache(maxsize=1)
def _cached() -> dict[str, Any]:
    adapter = TypeAdapter(Annotated[AnyConfiguration, Field(discriminator="type")])
    schema = adapter.json_schema(mode="validation")
    _relax(schema["$defs"])
    schema = _rename_ranges(schema)
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "dstack configuration"
    return schema


def configuration_json_schema() -> dict[str, Any]:
    """JSON Schema of every configuration type, as `dstack schema` prints it: a fresh copy, so
    callers may annotate it without touching the cache."""
    return copy.deepcopy(_cached())
