"""`files`: local files and folders the CLI uploaded, put where the configuration says.

The start frame carries them after the code archive, one `.tar.gz` each, in the order of the
spec's `files` (`[{path, length}]`). Each archive holds one entry named `x` (the file, or the
folder with its contents). At creation they are unpacked next to the code (`code-files/N/x`;
a job run as another user gets them moved with its code, jobuser.py). When the job starts they
are copied to their paths (process runtime: `~` is the job's HOME and a relative path is
relative to the working dir; the copy runs as the job's user, so it can write nothing the job
could not) or bind-mounted there (docker runtime).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

from dstack.agent.tarsafe import unpack_code
from dstack.agent.util import CODE_DIR

ENTRY = "x"


class FilesError(Exception):
    """A file could not be put in place; the message names the entry and the path."""


def total_length(spec: dict[str, Any]) -> int:
    return sum(int(f["length"]) for f in spec.get("files") or [])


def copy_range(src: IO[bytes], length: int) -> IO[bytes]:
    out = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    left = length
    while left > 0:
        chunk = src.read(min(left, 1024 * 1024))
        if not chunk:
            raise OSError("files: the start frame ended early")
        out.write(chunk)
        left -= len(chunk)
    out.seek(0)
    return out


def staging_dir(job_dir: Path) -> Path:
    """Beside the code's real location (which moves for a job run as another user)."""
    code = Path(os.path.realpath(job_dir / CODE_DIR))
    return code.parent / f"{code.name}-files"


def unpack(spool: IO[bytes], code_length: int, spec: dict[str, Any], job_dir: Path) -> None:
    """Unpack the archives that follow the code in `spool` (positioned after the code)."""
    spool.seek(code_length)
    dest = job_dir / f"{CODE_DIR}-files"
    for i, entry in enumerate(spec.get("files") or []):
        with copy_range(spool, int(entry["length"])) as part:
            unpack_code(part, dest / str(i))
        if not os.path.lexists(dest / str(i) / ENTRY):
            raise FilesError(f"files[{i}]: the archive has no entry")


def target(path: str, home: str, workdir: str) -> str:
    if path == "~" or path.startswith("~/"):
        return os.path.join(home, path[2:]) if path != "~" else home
    return path if path.startswith("/") else os.path.join(workdir, path)


def _copy(src: str, dst: str) -> None:
    """Copy a file or merge a folder into place, creating parents."""
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    if os.path.isdir(src) and not os.path.islink(src):
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)


def _copy_as(src: str, dst: str, ident: dict[str, Any] | None) -> str | None:
    """`_copy` in a forked child that first becomes the job's user (no exec: the agent's
    Python may be one the user cannot run); the error text, or None."""
    if not ident:
        try:
            _copy(src, dst)
        except OSError as e:
            return str(e)
        return None
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read_fd)
            os.setgroups(ident["groups"])
            os.setgid(ident["gid"])
            os.setuid(ident["uid"])
            _copy(src, dst)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(write_fd, str(e).encode()[:4000])
            code = 1
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        error = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return None if status == 0 else (error or f"copy failed (status {status})")


def place(job_dir: Path, spec: dict[str, Any], home: str, workdir: str, ident: Any) -> None:
    """Copy every file to its place (process runtime) as the job's user (`ident`)."""
    staging = staging_dir(job_dir)
    for i, entry in enumerate(spec.get("files") or []):
        dst = target(entry["path"], home, workdir)
        error = _copy_as(str(staging / str(i) / ENTRY), dst, ident)
        if error is not None:
            raise FilesError(f"files[{i}]: cannot copy to {dst}: {error}")


def docker_mounts(job_dir: Path, spec: dict[str, Any], workdir: str) -> list[str]:
    """`-v` arguments that put each file at its container path (`~`: the image user's home as
    the configuration's `home_dir` says, /root by default)."""
    staging = staging_dir(job_dir)
    home = spec.get("home_dir") or "/root"
    argv: list[str] = []
    for i, entry in enumerate(spec.get("files") or []):
        argv += ["-v", f"{staging / str(i) / ENTRY}:{target(entry['path'], home, workdir)}"]
    return argv


def cleanup(job_dir: Path) -> None:
    staging = staging_dir(job_dir)
    if staging.name.endswith("-files") and staging.parent != job_dir:
        shutil.rmtree(staging, ignore_errors=True)
