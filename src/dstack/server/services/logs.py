"""The server's copy of job logs: one JSON-lines file per job submission.

Records are appended as the job reconciler pulls them from the agent. The last record of every
page also carries the agent's cursor (`ao`), so after a server crash the copy resumes exactly
where it stopped: no line is lost and none is written twice. Reads page through the file by
byte offset, so nothing grows in memory with the log.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dstack.models.logs import JobSubmissionLogs, LogEvent

MAX_PAGE_BYTES = 4 * 1024 * 1024


def log_path(logs_dir: Path, project: str, run_name: str, job_id: str) -> Path:
    return logs_dir / project / "logs" / run_name / job_id / "job.log"


def agent_offset(path: Path) -> int:
    """The agent cursor stored with the last record, 0 when nothing was copied yet."""
    if not path.exists():
        return 0
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        pos = max(0, size - 65536)
        while True:
            f.seek(pos)
            tail = f.read(size - pos)
            lines = tail.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or pos == 0:
                break
            pos = max(0, pos - 65536 * 4)
    last = lines[-1] if lines and lines[-1] else b""
    if not last:
        return 0
    try:
        return int(json.loads(last).get("ao", 0))
    except (ValueError, AttributeError):
        return 0


def append(path: Path, entries: list[dict[str, Any]], next_offset: int) -> None:
    """Append one agent page; the page's last record carries the agent cursor."""
    if not entries:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for i, e in enumerate(entries):
        rec: dict[str, Any] = {
            "t": e["timestamp"],
            "s": e.get("stream", "stdout"),
            "m": e["message"],
        }
        if i == len(entries) - 1:
            rec["ao"] = next_offset
        out.append(json.dumps(rec, separators=(",", ":")))
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def poll(
    path: Path,
    *,
    next_token: str | None,
    limit: int,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> JobSubmissionLogs:
    """A page of at most `limit` records from the token's offset. `next_token` is the offset
    after the last record returned, or null when nothing was returned (poll again later with
    the last token you got)."""
    try:
        offset = int(next_token) if next_token else 0
    except ValueError as e:
        raise ValueError(f"invalid next_token {next_token!r}") from e
    if not path.exists():
        return JobSubmissionLogs(logs=[], next_token=None)
    events: list[LogEvent] = []
    with path.open("rb") as f:
        f.seek(offset)
        read = 0
        while len(events) < limit and read < MAX_PAGE_BYTES:
            line = f.readline()
            if not line or not line.endswith(b"\n"):
                break
            read += len(line)
            offset += len(line)
            rec = json.loads(line)
            ts = _ts(int(rec["t"]))
            if start_time is not None and ts < start_time:
                continue
            if end_time is not None and ts > end_time:
                continue
            events.append(
                LogEvent(timestamp=ts, log_source=rec.get("s", "stdout"), message=rec["m"])
            )
    return JobSubmissionLogs(logs=events, next_token=str(offset) if read else None)


def decode(event: LogEvent) -> bytes:
    return base64.b64decode(event.message)
