"""Log records on disk and paging by byte offset."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from dstack.agent.logs import BadOffset, LogWriter, read_page


def _write(path: Path, chunks: list[tuple[str, bytes]]) -> None:
    writer = LogWriter(path)
    for i, (stream, data) in enumerate(chunks):
        writer.write(stream, data, timestamp_ms=1000 + i)
    writer.close()


def test_pages_hold_whole_records_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "logs.jsonl"
    _write(path, [("stdout", f"line {i}\n".encode()) for i in range(50)])
    size = path.stat().st_size
    offset, seen = 0, []
    while True:
        entries, next_offset, file_size = read_page(path, offset, 300)
        assert file_size == size
        assert next_offset - offset <= 300 or len(entries) == 1
        if not entries:
            break
        seen += [base64.b64decode(e["message"]).decode() for e in entries]
        offset = next_offset
    assert seen == [f"line {i}\n" for i in range(50)]
    assert offset == size


def test_record_larger_than_limit_is_still_returned(tmp_path: Path) -> None:
    path = tmp_path / "logs.jsonl"
    _write(path, [("stderr", b"x" * 5000), ("stdout", b"y")])
    entries, next_offset, _ = read_page(path, 0, 100)
    assert len(entries) == 1 and entries[0]["stream"] == "stderr"
    entries, end, size = read_page(path, next_offset, 100)
    assert [base64.b64decode(e["message"]) for e in entries] == [b"y"]
    assert end == size


def test_partial_last_line_is_not_served(tmp_path: Path) -> None:
    path = tmp_path / "logs.jsonl"
    _write(path, [("stdout", b"a")])
    complete = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"timestamp": 1, "stre')
    entries, next_offset, _ = read_page(path, 0, 4096)
    assert len(entries) == 1 and next_offset == complete


def test_offsets_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "logs.jsonl"
    assert read_page(path, 0, 10) == ([], 0, 0)
    with pytest.raises(BadOffset):
        read_page(path, 5, 10)
    _write(path, [("stdout", b"hello")])
    with pytest.raises(BadOffset):
        read_page(path, 3, 10)
    with pytest.raises(BadOffset):
        read_page(path, path.stat().st_size + 1, 10)


def test_tail_text_keeps_last_lines(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "logs.jsonl")
    writer.write("stdout", b"".join(f"l{i}\n".encode() for i in range(10)))
    writer.write("stderr", b"partial")
    assert writer.tail_text() == "l6\nl7\nl8\nl9\npartial"
    writer.close()
