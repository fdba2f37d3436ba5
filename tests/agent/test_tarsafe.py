"""Unpacking code archives safely."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from dstack.agent.tarsafe import Budget, UnsafeArchive, check_member_name, unpack_code


def _tar(members: list[tuple[str, str, str]]) -> io.BytesIO:
    """(kind, name, content-or-linkname) -> a .tar.gz in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = value.encode()
                info.size = len(data)
                info.mode = 0o4777
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, value
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, value
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info)
    buf.seek(0)
    return buf


def test_normal_archive(tmp_path: Path) -> None:
    dest = tmp_path / "code"
    members = [
        ("dir", "src", ""),
        ("file", "src/a.py", "print(1)"),
        ("file", "./b.txt", "b"),
        ("sym", "src/link", "a.py"),
        ("sym", "up", "src/../b.txt"),
        ("hard", "c.txt", "b.txt"),
    ]
    assert unpack_code(_tar(members), dest) == 6
    assert (dest / "src/a.py").read_text() == "print(1)"
    assert (dest / "src/link").read_text() == "print(1)"
    assert (dest / "up").read_text() == "b" and (dest / "c.txt").read_text() == "b"
    mode = (dest / "src/a.py").stat().st_mode
    assert not mode & 0o4000 and not mode & 0o002  # no setuid, not world-writable


@pytest.mark.parametrize(
    "members",
    [
        [("file", "/etc/evil", "x")],
        [("file", "../evil", "x")],
        [("file", "a/../../evil", "x")],
        [("sym", "link", "/etc")],
        [("sym", "link", "../outside")],
        [("sym", "sub/link", "../../outside")],
        [("hard", "h", "../outside")],
        [("fifo", "pipe", "")],
        # Each link harmless by name, together pointing outside: caught on disk.
        [("sym", "dot", "."), ("sym", "dot2", "dot/..")],
        # Writing through a link that points outside.
        [("sym", "dot", "."), ("file", "dot/../evil", "x")],
    ],
)
def test_unsafe_archives_are_rejected(tmp_path: Path, members: list) -> None:
    dest = tmp_path / "work" / "code"
    dest.parent.mkdir()
    with pytest.raises(UnsafeArchive):
        unpack_code(_tar(members), dest)
    assert not dest.exists()
    assert os.listdir(dest.parent) == []  # nothing half-written, nothing outside
    assert not (tmp_path / "evil").exists() and not (tmp_path / "work" / "evil").exists()


def test_garbage_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive):
        unpack_code(io.BytesIO(b"definitely not a tarball"), tmp_path / "code")


def test_replaces_previous_code(tmp_path: Path) -> None:
    dest = tmp_path / "code"
    unpack_code(_tar([("file", "old.txt", "1")]), dest)
    unpack_code(_tar([("file", "new.txt", "2")]), dest)
    assert sorted(os.listdir(dest)) == ["new.txt"]


def test_check_member_name() -> None:
    assert check_member_name("./a//b/./c") == "a/b/c"
    assert check_member_name(".") == ""
    with pytest.raises(UnsafeArchive):
        check_member_name("a/../../b")


@pytest.mark.parametrize(
    ("budget", "members", "expected"),
    [
        (
            Budget(max_bytes=100, max_files=10),
            [("file", "a", "x" * 60), ("file", "b", "y" * 60)],
            "unpacks to more than 100 bytes",
        ),
        (
            Budget(max_bytes=10**6, max_files=3),
            [("file", f"f{i}", "") for i in range(4)],
            "more than 3 entries",
        ),
    ],
)
def test_caps_stop_a_bomb_before_it_is_written(
    tmp_path: Path, budget: Budget, members: list, expected: str
) -> None:
    dest = tmp_path / "code"
    with pytest.raises(UnsafeArchive, match=expected):
        unpack_code(_tar(members), dest, budget)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_an_archive_within_the_caps_unpacks(tmp_path: Path) -> None:
    members = [("file", "a", "x" * 60), ("file", "b", "y" * 40)]
    assert unpack_code(_tar(members), tmp_path / "code", Budget(max_bytes=100, max_files=2)) == 2
