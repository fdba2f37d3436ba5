"""`files` entries as the CLI uploads them: one deterministic .tar.gz per entry, holding the
local file or folder under the single name `x` (the agent puts `x` at the entry's path).

Local paths are relative to the configuration file's directory (`~` is the user's home); a
missing one is an error naming it. Each archive is uploaded like the code (same endpoint, same
size limit) and the run spec refers to it by hash (`file_archives`).
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path
from typing import Any

from dstack.api.code import DEFAULT_LIMIT, format_size
from dstack.errors import DstackError

ENTRY = "x"


class FilesError(DstackError):
    pass


def local_source(local_path: str, base: Path) -> Path:
    path = Path(os.path.expanduser(local_path))
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise FilesError(f"files: {local_path} does not exist ({path})")
    return path


def _members(source: Path) -> list[tuple[Path, str]]:
    if not source.is_dir():
        return [(source, ENTRY)]
    out = [(source, ENTRY)]
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        rel = Path(dirpath).relative_to(source)
        for name in sorted(dirnames) + sorted(filenames):
            out.append((Path(dirpath) / name, f"{ENTRY}/{(rel / name).as_posix()}"))
    return out


def build_file_archive(source: Path, limit: int | None = DEFAULT_LIMIT) -> bytes:
    """A reproducible archive of `source` (fixed mtimes and owners, sorted)."""
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path, name in _members(source):
            info = tar.gettarinfo(str(path), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if limit is not None and buf.tell() > limit:
                size = format_size(limit)
                raise FilesError(f"files: {source} is over the upload limit of {size}")
    return buf.getvalue()


def upload_files(
    api: Any, configuration: dict[str, Any], base: Path, limit: int | None
) -> list[dict[str, str]]:
    """Upload every `files` entry; the run spec's `file_archives` ({id, path})."""
    out = []
    for entry in configuration.get("files") or []:
        source = local_source(entry["local_path"], base)
        digest = api.upload_code(build_file_archive(source, limit), repo_id="none")
        out.append({"id": digest, "path": entry["path"]})
    return out
