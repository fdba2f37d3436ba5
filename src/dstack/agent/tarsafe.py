"""Unpack a user's code archive without letting it write outside its directory.

Names are checked lexically before anything is written, and every link is checked
against the real filesystem as it is created, so a chain of individually harmless links
cannot lead outside either.

An archive is also bounded in what it unpacks to (an archive bomb: 1 MB of zeros compressed
unpacks to gigabytes): the sizes and the count of its members are added up from their headers
before each is written, and the unpacking stops at the caps, leaving nothing behind. A full disk
while unpacking is not the archive's fault: that OSError passes through as it is.
"""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
from pathlib import Path
from typing import IO


class UnsafeArchive(ValueError):
    pass


MAX_BYTES_ENV = "DSTACK_AGENT_CODE_MAX_BYTES"
MAX_FILES_ENV = "DSTACK_AGENT_CODE_MAX_FILES"
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024
DEFAULT_MAX_FILES = 100_000


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.isdigit() else default


class Budget:
    """What an archive may still unpack to; `spend` refuses the member that goes over."""

    def __init__(self, max_bytes: int | None = None, max_files: int | None = None) -> None:
        self.max_bytes = (
            _env_int(MAX_BYTES_ENV, DEFAULT_MAX_BYTES) if max_bytes is None else max_bytes
        )
        self.max_files = (
            _env_int(MAX_FILES_ENV, DEFAULT_MAX_FILES) if max_files is None else max_files
        )
        self.bytes = 0
        self.files = 0

    def spend(self, member: tarfile.TarInfo) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise UnsafeArchive(
                f"the code archive holds more than {self.max_files} entries (the agent's limit, "
                f"{MAX_FILES_ENV})"
            )
        if member.isreg():
            self.bytes += max(member.size, 0)
        if self.bytes > self.max_bytes:
            raise UnsafeArchive(
                f"the code archive unpacks to more than {self.max_bytes} bytes (the agent's "
                f"limit, {MAX_BYTES_ENV})"
            )


def check_member_name(name: str) -> str:
    """Return the normalized relative name, or raise for absolute or escaping names."""
    if name.startswith("/") or name.startswith("\\"):
        raise UnsafeArchive(f"absolute path in archive: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"path with '..' in archive: {name!r}")
    return "/".join(parts)


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def check_link_target(rel_name: str, member: tarfile.TarInfo) -> None:
    """Reject links that lexically point outside the archive root."""
    target = member.linkname
    if target.startswith("/"):
        raise UnsafeArchive(f"link to an absolute path in archive: {member.name!r}")
    base = os.path.dirname(rel_name) if member.issym() else ""
    joined = os.path.normpath(os.path.join(base, target))
    if joined == ".." or joined.startswith("../"):
        raise UnsafeArchive(f"link escaping the code directory: {member.name!r}")


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root: str) -> None:
    dest = os.path.join(root, member.name)
    parent = os.path.realpath(os.path.dirname(dest))
    if not _inside(root, parent):
        raise UnsafeArchive(f"path through a link outside the code directory: {member.name!r}")
    kwargs = {}
    if hasattr(tarfile, "fully_trusted_filter"):
        kwargs["filter"] = "fully_trusted"  # our own checks already ran
    tar.extract(member, root, set_attrs=not member.issym(), **kwargs)
    if member.issym() and not _inside(root, os.path.realpath(dest)):
        os.unlink(dest)
        raise UnsafeArchive(f"link escaping the code directory: {member.name!r}")


def _sanitize(member: tarfile.TarInfo, rel_name: str) -> tarfile.TarInfo:
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise UnsafeArchive(f"special file in archive: {member.name!r}")
    if member.issym() or member.islnk():
        check_link_target(rel_name, member)
        if member.islnk():
            member.linkname = check_member_name(member.linkname)
    member.name = rel_name
    # No setuid/sticky bits, no world-writable files; the owner can always read/write.
    member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
    member.uid, member.gid = os.getuid(), os.getgid()
    member.uname = member.gname = ""
    return member


def unpack_code(fileobj: IO[bytes], dest: Path, budget: Budget | None = None) -> int:
    """Unpack a .tar.gz stream into `dest` (created; replaced if present). Returns file count.

    Unpacks into a sibling temporary directory first, so a rejected archive leaves
    nothing half-written behind.
    """
    tmp = dest.with_name(dest.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    root = os.path.realpath(tmp)
    budget = budget or Budget()
    count = 0
    try:
        try:
            with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
                for member in tar:
                    rel = check_member_name(member.name)
                    if not rel:
                        continue
                    budget.spend(member)
                    _extract_member(tar, _sanitize(member, rel), root)
                    count += 1
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UnsafeArchive(f"cannot read the code archive: {e}") from e
        except (tarfile.TarError, EOFError) as e:
            raise UnsafeArchive(f"cannot read the code archive: {e}") from e
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count
