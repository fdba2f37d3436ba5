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
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from dstack.agent.tarsafe import unpack_code
from dstack.agent.util import CODE_DIR

ENTRY = "x"
COPY_TIMEOUT = 600.0
# Run as the job's user: copy a file or merge a folder into place, creating parents.
_COPY = (
    "import os,shutil,sys\n"
    "src,dst=sys.argv[1],sys.argv[2]\n"
    "os.makedirs(os.path.dirname(dst) or '.',exist_ok=True)\n"
    "if os.path.isdir(src) and not os.path.islink(src):\n"
    "    shutil.copytree(src,dst,symlinks=True,dirs_exist_ok=True)\n"
    "else:\n"
    "    shutil.copy2(src,dst,follow_symlinks=False)\n"
)


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


def place(job_dir: Path, spec: dict[str, Any], home: str, workdir: str, kwargs: Any) -> None:
    """Copy every file to its place (process runtime) as the job's user (`kwargs`)."""
    staging = staging_dir(job_dir)
    for i, entry in enumerate(spec.get("files") or []):
        dst = target(entry["path"], home, workdir)
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", _COPY, str(staging / str(i) / ENTRY), dst],
                capture_output=True,
                text=True,
                timeout=COPY_TIMEOUT,
                stdin=subprocess.DEVNULL,
                cwd="/",
                **kwargs,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise FilesError(f"files[{i}]: cannot copy to {dst}: {e}") from None
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            raise FilesError(f"files[{i}]: cannot copy to {dst}: {why}")


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
