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
from dstack.server.services.state_dir import private_file

MAX_PAGE_BYTES = 4 * 1024 * 1024


def log_path(logs_dir: Path, project: str, run_name: str, job_id: str) -> Path:
    return logs_dir / project / "logs" / run_name / job_id / "job.log"


def agent_offset(path: Path) -> int:
    """The agent cursor stored with the last complete page, 0 when nothing was copied yet.

    A crash in the middle of `append` can leave a torn page at the end of the file: it is cut
    off here, so the copy resumes from the last page that was written whole and no line is
    stored twice."""
    if not path.exists():
        return 0
    with path.open("rb+") as f:
        data_end = f.seek(0, os.SEEK_END)
        pos = data_end
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            chunk = f.read(pos - start)
            for line_end in _line_ends_backwards(chunk, start, data_end):
                offset = _cursor_of_line(f, line_end)
                if offset is not None:
                    if line_end != data_end:
                        f.truncate(line_end)
                    return offset
            pos = start
        f.truncate(0)
    return 0


def _line_ends_backwards(chunk: bytes, start: int, data_end: int) -> list[int]:
    """File offsets just after each newline in `chunk`, last first."""
    ends = []
    i = len(chunk)
    while True:
        i = chunk.rfind(b"\n", 0, i)
        if i < 0:
            return ends
        ends.append(start + i + 1)


def _cursor_of_line(f, line_end: int) -> int | None:  # noqa: ANN001
    """The `ao` of the record ending at `line_end`, None if it has none or is not a record."""
    lo = max(0, line_end - 1024 * 1024)
    f.seek(lo)
    head = f.read(line_end - 1 - lo)
    line = head[head.rfind(b"\n") + 1 :]
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if isinstance(rec, dict) and "ao" in rec:
        return int(rec["ao"])
    return None


def append(path: Path, entries: list[dict[str, Any]], next_offset: int) -> None:
    """Append one agent page; the page's last record carries the agent cursor."""
    if not entries:
        return
    if not path.exists():  # a job's output is for its project: 0700 folders, a 0600 file
        private_file(path)
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
    with path.open("a+b") as f:
        # After a crash the file may end in a torn record: start on a fresh line.
        prefix = b""
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            prefix = b"" if f.read(1) == b"\n" else b"\n"
        f.write(prefix + ("\n".join(out) + "\n").encode())
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
            try:
                rec = json.loads(line)
                ts = _ts(int(rec["t"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn record from a crash; the resumed copy follows it

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
