"""Base class of every model that crosses the HTTP API.

Wire models ignore unknown keys so that an older CLI keeps working against a newer server
(new fields appear; old clients skip them). Configurations are strict; wire models are not.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    # `defer_build`: a model's validator and serializer are built when it is first used, not
    # when its module is imported. Building every model at import was ~40% of the server's
    # cold start (and a share of every CLI command's), for models most processes never touch.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, defer_build=True)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
