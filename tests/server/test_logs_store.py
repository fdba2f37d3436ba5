"""The server's JSON-lines log store: append with the agent cursor, page by byte offset."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dstack.server.services import logs

T0 = 1_767_268_800_000  # 2026-01-01T12:00:00Z in ms


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def entries(*texts: str, start: int = 0, stream: str = "stdout") -> list[dict]:
    return [
        {"timestamp": T0 + (start + i) * 1000, "stream": stream, "message": b64(t)}
        for i, t in enumerate(texts)
    ]


def texts(page) -> list[str]:
    return [logs.decode(e).decode() for e in page.logs]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return logs.log_path(tmp_path, "main", "my-run", "job-1")


def test_log_path(tmp_path: Path) -> None:
    assert logs.log_path(tmp_path, "main", "my-run", "j") == (
        tmp_path / "main" / "logs" / "my-run" / "j" / "job.log"
    )


def test_agent_offset_of_a_missing_file_is_zero(path: Path) -> None:
    assert logs.agent_offset(path) == 0


def test_append_stores_the_agent_cursor_on_the_last_record(path: Path) -> None:
    logs.append(path, entries("a", "b"), 17)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == [
        {"t": T0, "s": "stdout", "m": b64("a")},
        {"t": T0 + 1000, "s": "stdout", "m": b64("b"), "ao": 17},
    ]
    assert logs.agent_offset(path) == 17
    logs.append(path, entries("c", start=2, stream="stderr"), 40)
    assert logs.agent_offset(path) == 40


def test_append_nothing_is_a_no_op(path: Path) -> None:
    logs.append(path, [], 99)
    assert not path.exists()
    assert logs.agent_offset(path) == 0


def test_agent_offset_after_a_long_last_line(path: Path) -> None:
    logs.append(path, entries("a"), 5)
    logs.append(path, entries("x" * 300_000, start=1), 300_006)
    assert logs.agent_offset(path) == 300_006


def test_stream_defaults_to_stdout(path: Path) -> None:
    logs.append(path, [{"timestamp": T0, "message": b64("m")}], 1)
    page = logs.poll(path, next_token=None, limit=10)
    assert [e.log_source for e in page.logs] == ["stdout"]


def test_poll_a_missing_file(path: Path) -> None:
    page = logs.poll(path, next_token=None, limit=10)
    assert (page.logs, page.next_token) == ([], None)


def test_poll_pages_by_offset_until_the_end(path: Path) -> None:
    logs.append(path, entries("one", "two", "three"), 3)
    logs.append(path, entries("four", "five", start=3, stream="stderr"), 5)
    seen, token, pages = [], None, 0
    while True:
        page = logs.poll(path, next_token=token, limit=2)
        if page.next_token is None:
            assert page.logs == []
            break
        seen += texts(page)
        token = page.next_token
        pages += 1
    assert seen == ["one", "two", "three", "four", "five"]
    assert pages == 3
    assert token == str(path.stat().st_size)


def test_poll_event_fields(path: Path) -> None:
    logs.append(path, entries("hello", stream="stderr"), 1)
    page = logs.poll(path, next_token=None, limit=10)
    (e,) = page.logs
    assert e.timestamp == datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert e.log_source == "stderr"
    assert e.message == b64("hello")


def test_follow_picks_up_new_lines_from_the_last_token(path: Path) -> None:
    logs.append(path, entries("a"), 1)
    first = logs.poll(path, next_token=None, limit=100)
    assert texts(first) == ["a"]
    assert logs.poll(path, next_token=first.next_token, limit=100).next_token is None
    logs.append(path, entries("b", start=1), 2)
    again = logs.poll(path, next_token=first.next_token, limit=100)
    assert texts(again) == ["b"]


def test_a_partial_last_line_is_not_returned(path: Path) -> None:
    logs.append(path, entries("a"), 1)
    with path.open("a") as f:
        f.write('{"t": 1, "s": "stdout", "m": "Y')
    page = logs.poll(path, next_token=None, limit=100)
    assert texts(page) == ["a"]
    assert logs.poll(path, next_token=page.next_token, limit=100).next_token is None


def test_time_filters(path: Path) -> None:
    logs.append(path, entries("0", "1", "2", "3"), 4)
    start = datetime.fromtimestamp((T0 + 1000) / 1000, tz=timezone.utc)
    end = datetime.fromtimestamp((T0 + 2000) / 1000, tz=timezone.utc)
    page = logs.poll(path, next_token=None, limit=100, start_time=start, end_time=end)
    assert texts(page) == ["1", "2"]
    # filtered records still advance the token: nothing is read twice
    assert page.next_token == str(path.stat().st_size)


def test_invalid_token(path: Path) -> None:
    with pytest.raises(ValueError, match="invalid next_token 'abc'"):
        logs.poll(path, next_token="abc", limit=1)


def test_binary_safe(path: Path) -> None:
    raw = bytes(range(256))
    logs.append(path, [{"timestamp": T0, "message": base64.b64encode(raw).decode()}], 1)
    (e,) = logs.poll(path, next_token=None, limit=1).logs
    assert logs.decode(e) == raw


def test_agent_offset_survives_a_torn_last_record(path: Path) -> None:
    logs.append(path, entries("a", "b"), 42)
    with path.open("a") as f:
        f.write('{"t":1767268802000,"s":"stdout","m":"Yw')  # crash mid-append
    assert logs.agent_offset(path) == 42


def test_logs_after_a_torn_record_stay_readable(path: Path) -> None:
    logs.append(path, entries("a"), 1)
    with path.open("a") as f:
        f.write('{"t":1767268802000,"s":"stdout","m":"Yw')
    logs.append(path, entries("b", "c", start=1), 3)
    page = logs.poll(path, next_token=None, limit=100)
    assert texts(page)[-2:] == ["b", "c"]
