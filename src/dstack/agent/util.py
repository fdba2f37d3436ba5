"""Small helpers shared by the agent and its job supervisors."""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
from pathlib import Path
from typing import Any


def now_iso() -> str:
    return iso_from_ts(time.time())


def iso_from_ts(ts: float) -> str:
    dt = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
    return dt.isoformat().replace("+00:00", "Z")


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via tmp + rename so that readers (another process) never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    write_text_atomic(path, json.dumps(data), mode)


def read_json(path: Path) -> Any:
    """Return the parsed file, or None when it is missing or (being) corrupt."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, which may itself contain spaces."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of a process; guards against pid reuse after a reboot."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """True when `pid` runs and is the same process that was recorded (not a zombie)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _proc_state(pid) == "Z":
        return False
    if start_time is not None:
        current = proc_start_time(pid)
        if current is not None and current != start_time:
            return False
    return True


# Files of one job directory; the agent derives a job's state from these alone.
SPEC_FILE = "spec.json"
SUPERVISOR_FILE = "supervisor.json"
READY_FILE = "supervisor.ready"
STOP_FILE = "stop.json"
RESULT_FILE = "result.json"
PORTS_FILE = "ports.json"
LOGS_FILE = "logs.jsonl"
SUPERVISOR_LOG = "supervisor.log"
CODE_DIR = "code"
CHILD_FILE = "child.json"
