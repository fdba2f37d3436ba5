"""`repos`: a remote Git repository cloned on the host before the job starts.

The clone runs as the job's user (process runtime) into the repo's path (relative: the working
dir; `~`: the job's HOME), or as the agent into a directory beside the code that is
bind-mounted at the container path (docker runtime). Credentials never reach a command line:
a token becomes an `Authorization` header through git's environment configuration
(`GIT_CONFIG_*`), an SSH key a 0600 file named by `GIT_SSH_COMMAND`, removed after the clone.
Only the http, https, git and ssh transports are allowed (`GIT_ALLOW_PROTOCOL`): never `file`
or `ext` (which runs commands), since the URL comes from the user.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from dstack.agent.util import CODE_DIR

ALLOWED_PROTOCOLS = "http:https:git:ssh"
CLONE_TIMEOUT = 1800.0
# `scheme://...` with an allowed scheme, or scp-like `user@host:path`.
URL_RE = re.compile(r"^(https?|git|ssh)://[^\s]+$|^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+$")
REF_RE = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")
HASH_RE = re.compile(r"^[0-9a-fA-F]{4,64}$")


class CloneError(Exception):
    """The repository could not be put in place; the message says why (never a secret)."""


def staging_dir(job_dir: Path) -> Path:
    code = Path(os.path.realpath(job_dir / CODE_DIR))
    return code.parent / f"{code.name}-repo"


def _env(repo: dict[str, Any], key_dir: str, key_file: str | None, home: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
    env.update(HOME=home, GIT_TERMINAL_PROMPT="0", GIT_ALLOW_PROTOCOL=ALLOWED_PROTOCOLS)
    known = shlex.quote(os.path.join(key_dir, "known_hosts"))
    env["GIT_SSH_COMMAND"] = (
        f"ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known}"
    )
    if key_file:
        env["GIT_SSH_COMMAND"] += f" -o IdentitiesOnly=yes -i {shlex.quote(key_file)}"
    if repo.get("token"):
        basic = base64.b64encode(f"x-access-token:{repo['token']}".encode()).decode()
        env.update(
            GIT_CONFIG_COUNT="1",
            GIT_CONFIG_KEY_0="http.extraHeader",
            GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
        )
    return env


def _argv(repo: dict[str, Any], dest: str) -> list[str]:
    argv = ["git", "clone", "--quiet"]
    if repo.get("branch"):
        argv += ["--branch", repo["branch"]]
    if repo.get("single_branch"):
        argv.append("--single-branch")
    return [*argv, "--", repo["url"], dest]


def _run(argv: list[str], env: dict[str, str], kwargs: dict[str, Any], cwd: str) -> str | None:
    try:
        proc = subprocess.run(
            argv,
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=CLONE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    if proc.returncode == 0:
        return None
    lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
    return " ".join(lines[-3:]) or f"exit {proc.returncode}"


def clone(repo: dict[str, Any], dest: str, ident: dict[str, Any] | None) -> None:
    """Clone `repo` into `dest` (created; an existing non-empty `dest` follows `if_exists`)."""
    if os.path.isdir(dest) and os.listdir(dest):
        if repo.get("if_exists") == "skip":
            return
        raise CloneError(f"repos[0]: {dest} is not empty (if_exists: error)")
    kwargs: dict[str, Any] = {}
    if ident:
        kwargs = {"user": ident["uid"], "group": ident["gid"], "extra_groups": ident["groups"]}
    parent = os.path.dirname(dest.rstrip("/")) or "/"
    os.makedirs(parent, exist_ok=True)
    key_dir = tempfile.mkdtemp(prefix="dstack-git-")
    try:
        key_file = None
        if repo.get("private_key"):
            key_file = os.path.join(key_dir, "key")
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(repo["private_key"].rstrip("\n") + "\n")
        if ident:
            for path in (key_dir, key_file):
                if path:
                    os.chown(path, ident["uid"], ident["gid"])
            if not os.path.exists(dest):
                os.makedirs(dest)
                os.chown(dest, ident["uid"], ident["gid"])
        home = ident["home"] if ident else os.environ.get("HOME", "/")
        env = _env(repo, key_dir, key_file, home)
        error = _run(_argv(repo, dest), env, kwargs, parent)
        if error is None and repo.get("hash"):
            checkout = ["git", "-C", dest, "checkout", "--quiet", "--detach", repo["hash"]]
            error = _run(checkout, env, kwargs, parent)
        if error is not None:
            raise CloneError(f"repos[0]: cannot clone {repo['url']}: {error}")
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)


def validate(value: Any) -> dict[str, Any] | None:
    """The spec's `repo`; ValueError naming the field."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("repo: must be an object")
    url = value.get("url")
    if not isinstance(url, str) or not URL_RE.match(url) or url.startswith("-"):
        raise ValueError("repo.url: must be an http(s), git or ssh URL")
    out: dict[str, Any] = {"url": url}
    for field, pattern in (("branch", REF_RE), ("hash", HASH_RE)):
        ref = value.get(field)
        if ref is not None and (not isinstance(ref, str) or not pattern.match(ref)):
            raise ValueError(f"repo.{field}: invalid")
        if ref is not None and ref.startswith("-"):
            raise ValueError(f"repo.{field}: invalid")
        out[field] = ref
    path = value.get("path") or "."
    if not isinstance(path, str) or "\0" in path or ".." in path.split("/"):
        raise ValueError("repo.path: must be a path without '..'")
    out["path"] = path
    if value.get("if_exists", "error") not in ("error", "skip"):
        raise ValueError("repo.if_exists: must be 'error' or 'skip'")
    out["if_exists"] = value.get("if_exists", "error")
    out["single_branch"] = bool(value.get("single_branch"))
    for secret in ("token", "private_key"):
        item = value.get(secret)
        if item is not None and (not isinstance(item, str) or not item or "\0" in item):
            raise ValueError(f"repo.{secret}: must be a non-empty string")
        if item is not None:
            out[secret] = item
    if "token" in out and "\n" in out["token"]:
        raise ValueError("repo.token: must be one line")
    return out
