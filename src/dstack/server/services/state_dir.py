"""The server's state directory holds the database (run env values, encrypted credentials),
the encryption key, `config.yml` (which may hold keys and cloud credentials) and every job's
output. Another local user must read none of it: the directory is 0700 and these files 0600,
created so and fixed at each start for a directory an older version left at 0755/0644."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
# SQLite's side files take the database file's mode when SQLite creates them.
_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _chmod(path: Path, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError, PermissionError):
        if (path.stat().st_mode & 0o777) != mode:
            os.chmod(path, mode)


def private_dir(path: Path) -> None:
    """Create `path` (and parents) as 0700, or make an existing one 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _chmod(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Create an empty `path` as 0600 if missing (so whoever writes it next keeps the mode),
    or make an existing one 0600."""
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    _chmod(path, FILE_MODE)


def _tree(root: Path) -> None:
    """Every directory of `root` 0700 and every regular file 0600."""
    if not root.is_dir():
        return
    _chmod(root, DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            _chmod(Path(dirpath) / d, DIR_MODE)
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                _chmod(p, FILE_MODE)


def secure(server_dir: Path, sqlite_file: Path | None) -> None:
    """At start, before the database is opened: the directory 0700, its database (created
    empty as 0600 when new), key, configuration and job logs 0600."""
    private_dir(server_dir)
    private_dir(server_dir / "data")
    if sqlite_file is not None:
        private_file(sqlite_file)
        for suffix in _SQLITE_SUFFIXES[1:]:
            _chmod(sqlite_file.with_name(sqlite_file.name + suffix), FILE_MODE)
    for name in ("config.yml", "data/encryption.key"):
        _chmod(server_dir / name, FILE_MODE)
    _tree(server_dir / "projects")  # job logs: settings.logs_dir
