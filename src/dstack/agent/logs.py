"""Job logs on disk: one JSON record per line, paged by byte offset.

Records are written already base64-encoded so that serving a page is a bounded read of
whole lines; nothing about a log is ever held in memory beyond one page.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

# Reads from a job's pipes are at most this big, which bounds one record's size.
CHUNK_SIZE = 32 * 1024
TAIL_LINES = 5


class LogWriter:
    """Appends records from several reader threads; keeps the last lines for error messages."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        self._tail: collections.deque[bytes] = collections.deque(maxlen=TAIL_LINES)
        self._partial = b""

    def write(self, stream: str, data: bytes, timestamp_ms: int | None = None) -> None:
        if not data:
            return
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        record = {
            "timestamp": ts,
            "stream": stream,
            "message": base64.b64encode(data).decode("ascii"),
        }
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")
        with self._lock:
            os.write(self._fd, line)
            self._remember(data)

    def _remember(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-4096:]
        for line in lines:
            self._tail.append(line[-1024:])

    def tail_text(self) -> str:
        with self._lock:
            lines = list(self._tail)
            if self._partial:
                lines.append(self._partial)
        lines = [ln.rstrip(b"\r") for ln in lines][-TAIL_LINES:]
        return "\n".join(ln.decode("utf-8", "replace") for ln in lines)

    def close(self) -> None:
        os.close(self._fd)


class BadOffset(ValueError):
    pass


def read_page(path: Path, offset: int, limit: int) -> tuple[list[dict[str, Any]], int, int]:
    """Return (records, next_offset, file_size) for whole records from `offset`.

    At least one record is returned when one is complete, even if it alone exceeds
    `limit`, so that a reader always makes progress.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except FileNotFoundError:
        if offset != 0:
            raise BadOffset("offset is beyond the end of the log") from None
        return [], 0, 0
    with f:
        size = os.fstat(f.fileno()).st_size
        if offset > size:
            raise BadOffset("offset is beyond the end of the log")
        if offset > 0:
            f.seek(offset - 1)
            if f.read(1) != b"\n":
                raise BadOffset("offset is not at a record boundary")
        f.seek(offset)
        data = f.read(limit)
        end = data.rfind(b"\n")
        if end < 0 and len(data) == limit:
            # One record larger than the limit: read just that record.
            data += f.readline()
            end = data.rfind(b"\n")
    if end < 0:
        return [], offset, size
    data = data[: end + 1]
    records = [json.loads(line) for line in data.splitlines() if line]
    return records, offset + len(data), size
