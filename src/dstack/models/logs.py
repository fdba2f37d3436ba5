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
    # Long poll: with nothing new to return, hold the answer up to this many seconds until
    # there is, or the run finishes (0: answer at once).
    wait: float = Field(default=0.0, ge=0.0, le=30.0)
