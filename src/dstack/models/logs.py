"""Log pages returned by `/api/project/{p}/logs/poll`; messages are base64 so any bytes survive."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from dstack.models.wire import WireModel


class LogEvent(WireModel):
    timestamp: datetime
    log_source: str = "stdout"
    message: str  # base64


class JobSubmissionLogs(WireModel):
    logs: list[LogEvent] = Field(default_factory=list)
    next_token: str | None = None
    external_url: str | None = None


class PollLogsRequest(WireModel):
    run_name: str
    job_submission_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    descending: bool = False
    next_token: str | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    diagnose: bool = False
