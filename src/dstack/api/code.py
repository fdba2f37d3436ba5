"""The code archive a run ships: the working directory as a reproducible .tar.gz.

Files matched by `.gitignore` / `.dstackignore` (at any level, gitwildmatch semantics) and
`.git/` are left out. The archive is byte-identical for identical content (fixed mtimes,
owners and order) so that its hash tells the server whether the code changed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dstack.errors import DstackError

IGNORE_FILES = (".gitignore", ".dstackignore")
ALWAYS_IGNORED = (".git",)
DEFAULT_LIMIT = 2 * 1024 * 1024
RAW_FACTOR = 64


class CodeTooLargeError(DstackError):
    pass


@dataclass
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    base: str  # directory of the ignore file, relative, "" for the root


def _translate_segment(seg: str) -> str:
    out, i = [], 0
    while i < len(seg):
        c = seg[i]
        if c == "\\" and i + 1 < len(seg):
            out.append(re.escape(seg[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = seg.find("]", i + 2 if seg[i + 1 : i + 2] in ("!", "^", "]") else i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = seg[i + 1 : end]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def translate(pattern: str) -> str:
    """One gitignore pattern (without `!` and trailing `/`) as a full-path regex."""
    anchored = "/" in pattern
    pattern = pattern.lstrip("/")
    segs = pattern.split("/")
    res = ""
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        if seg == "**":
            if i == 0 and last:
                res += ".*"
            elif i == 0:
                res += "(?:.*/)?"
            elif last:
                res += "/.*"
            else:
                res += "(?:/.*)?/"
            continue
        if i > 0 and segs[i - 1] != "**":
            res += "/"
        res += _translate_segment(seg)
    if not anchored:
        res = "(?:.*/)?" + res
    return "^" + res + "$"


def parse_rules(text: str, base: str = "") -> list[_Rule]:
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip("\n\r")
        if not line.strip() or line.startswith("#"):
            continue
        while line.endswith(" ") and not line.endswith("\\ "):
            line = line[:-1]
        negate = line.startswith("!")
        if negate or line.startswith("\\!") or line.startswith("\\#"):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        rules.append(_Rule(re.compile(translate(line)), negate, dir_only, base))
    return rules


class IgnoreMatcher:
    """Ordered rules from every ignore file seen so far; the last matching rule wins."""

    def __init__(self, rules: list[_Rule] | None = None) -> None:
        self.rules = list(rules or [])

    def add_file(self, path: Path, base: str) -> None:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return
        self.rules.extend(parse_rules(text, base))

    def matches(self, rel: str, is_dir: bool) -> bool:
        """Whether `rel` itself is ignored (callers prune ignored directories)."""
        ignored = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.base:
                if not rel.startswith(rule.base + "/"):
                    continue
                sub = rel[len(rule.base) + 1 :]
            else:
                sub = rel
            if rule.regex.match(sub):
                ignored = not rule.negate
        return ignored

    def is_ignored(self, rel: str, is_dir: bool = False) -> bool:
        """Like `matches`, but a path inside an ignored directory is ignored too."""
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if self.matches("/".join(parts[:i]), True):
                return True
        return self.matches(rel, is_dir)


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of the files to ship, sorted, ignore files honoured."""
    return list(iter_files(root))


def iter_files(root: Path) -> Iterator[str]:
    """Lazily, so that archiving a huge directory stops as soon as it is over the limit."""
    matcher = IgnoreMatcher()
    # The user's dstack directory (keys, tokens, the server's data) never travels with code,
    # even when `apply` runs from the home directory.
    private = (Path(os.environ.get("HOME") or os.path.expanduser("~")) / ".dstack").resolve()

    def walk(directory: Path, rel: str) -> Iterator[str]:
        for name in IGNORE_FILES:
            candidate = directory / name
            if candidate.is_file():
                matcher.add_file(candidate, rel)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if entry.name in ALWAYS_IGNORED or matcher.matches(child, is_dir):
                continue
            if is_dir:
                if Path(entry.path).resolve() == private:
                    continue
                yield from walk(Path(entry.path), child)
            elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                yield child

    yield from walk(root, "")


def build_archive(root: Path, limit: int | None = DEFAULT_LIMIT) -> bytes:
    """A deterministic .tar.gz of `root`; raise `CodeTooLargeError` past `limit` bytes."""
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        raw_total = 0
        for rel in iter_files(root):
            info = tar.gettarinfo(str(root / rel), arcname=rel)
            raw_total += info.size
            if limit is not None and raw_total > limit * RAW_FACTOR:
                # Not worth compressing gigabytes to find out: no code compresses this well.
                raise _too_large(root, limit)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isreg():
                with (root / rel).open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if limit is not None and buf.tell() > limit:
                raise _too_large(root, limit)
    data = buf.getvalue()
    if limit is not None and len(data) > limit:
        raise _too_large(root, limit)
    return data


def _too_large(root: Path, limit: int) -> CodeTooLargeError:
    return CodeTooLargeError(
        f"The code in {root} is over the upload limit of {format_size(limit)} (compressed)."
        " Add large files and directories to .dstackignore (or .gitignore), or run from a"
        " smaller directory"
    )


def format_size(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n} B"


def upload_limit() -> int | None:
    """The server's default unless the same variable is set here; 0 means no limit."""
    value = os.environ.get("DSTACK_SERVER_CODE_UPLOAD_LIMIT") or os.environ.get(
        "DSTACK_CODE_UPLOAD_LIMIT"
    )
    try:
        limit = int(value) if value else DEFAULT_LIMIT
    except ValueError:
        return DEFAULT_LIMIT
    return limit or None


def archive_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
