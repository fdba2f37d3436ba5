"""Ignore-file matching (gitwildmatch) and the code archive."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from dstack.api.code import (
    CodeTooLargeError,
    IgnoreMatcher,
    build_archive,
    list_files,
    parse_rules,
)


def matcher(text: str) -> IgnoreMatcher:
    return IgnoreMatcher(parse_rules(text))


@pytest.mark.parametrize(
    "pattern, path, is_dir, expected",
    [
        ("*.log", "a.log", False, True),
        ("*.log", "deep/dir/a.log", False, True),
        ("*.log", "a.logx", False, False),
        ("/build", "build", True, True),
        ("/build", "src/build", True, False),
        ("build/", "src/build", True, True),
        ("build/", "build", False, False),
        ("doc/*.txt", "doc/a.txt", False, True),
        ("doc/*.txt", "doc/sub/a.txt", False, False),
        ("**/foo", "a/b/foo", False, True),
        ("**/foo", "foo", False, True),
        ("a/**/b", "a/b", False, True),
        ("a/**/b", "a/x/y/b", False, True),
        ("abc/**", "abc/x/y", False, True),
        ("abc/**", "abc", True, False),
        ("file?.txt", "file1.txt", False, True),
        ("file[0-9].txt", "file7.txt", False, True),
        ("file[!0-9].txt", "file7.txt", False, False),
        ("\\#notcomment", "#notcomment", False, True),
    ],
)
def test_patterns(pattern, path, is_dir, expected):
    assert matcher(pattern).matches(path, is_dir) is expected


def test_negation_and_order():
    m = matcher("*.log\n!keep.log\n# comment\n\n")
    assert m.matches("x.log", False)
    assert not m.matches("keep.log", False)


def test_inside_ignored_directory():
    m = matcher("data/\n")
    assert m.is_ignored("data/a/b.bin")
    assert not m.is_ignored("src/a.py")


def make_tree(root, files):
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def test_list_files_honours_nested_ignore_files(tmp_path):
    make_tree(
        tmp_path,
        {
            ".gitignore": "*.pyc\n/out\n",
            ".dstackignore": "data/\n",
            "main.py": "print(1)",
            "main.pyc": "x",
            "out/x.txt": "x",
            "sub/out/y.txt": "y",
            "data/big.bin": "z",
            "sub/.gitignore": "secret.txt\n",
            "sub/secret.txt": "s",
            "other/secret.txt": "s",
            ".git/HEAD": "ref",
        },
    )
    assert list_files(tmp_path) == [
        ".dstackignore",
        ".gitignore",
        "main.py",
        "other/secret.txt",
        "sub/.gitignore",
        "sub/out/y.txt",
    ]


def test_archive_is_reproducible_and_complete(tmp_path):
    make_tree(tmp_path, {"a.txt": "hello", "dir/b.txt": "world"})
    first = build_archive(tmp_path)
    os.utime(tmp_path / "a.txt", (1, 1))
    assert build_archive(tmp_path) == first
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        names = tar.getnames()
        assert names == ["a.txt", "dir/b.txt"]
        assert tar.extractfile("dir/b.txt").read() == b"world"


def test_archive_over_limit(tmp_path):
    make_tree(tmp_path, {"random.bin": os.urandom(64 * 1024)})
    with pytest.raises(CodeTooLargeError, match=r"upload limit of 32 KiB.*\.dstackignore"):
        build_archive(tmp_path, limit=32 * 1024)
    (tmp_path / ".dstackignore").write_text("*.bin\n")
    assert build_archive(tmp_path, limit=32 * 1024)


def test_upload_limit_from_environment(monkeypatch):
    from dstack.api.code import DEFAULT_LIMIT, upload_limit

    monkeypatch.delenv("DSTACK_SERVER_CODE_UPLOAD_LIMIT", raising=False)
    monkeypatch.delenv("DSTACK_CODE_UPLOAD_LIMIT", raising=False)
    assert upload_limit() == DEFAULT_LIMIT
    monkeypatch.setenv("DSTACK_SERVER_CODE_UPLOAD_LIMIT", "0")
    assert upload_limit() is None
    monkeypatch.setenv("DSTACK_SERVER_CODE_UPLOAD_LIMIT", "1024")
    assert upload_limit() == 1024
