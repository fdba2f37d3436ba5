"""Base class of every model that crosses the HTTP API.

Wire models ignore unknown keys so that an older CLI keeps working against a newer server
(new fields appear; old clients skip them). Configurations are strict; wire models are not.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
