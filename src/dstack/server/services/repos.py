"""`repos`: the run's Git repository (configuration.md §8) and its credentials.

A `local_path` repo is the working copy the CLI uploads as the run's code (at `path: .`). A
`url` repo is cloned on the host by the agent before the job starts (agent/gitclone.py), at
its `branch`/`hash`, `single_branch` as configured. Credentials (`-t/--token` or
`--git-identity`) arrive with the apply in `run_spec.repo_data.repo_creds`; the server keeps
them only encrypted with its Box (`repo_creds_encrypted`), never shows them back, and gives
them to the agent in the job's start request.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dstack.errors import ServerClientError
from dstack.models.runs import JobSpec, RunSpec
from dstack.server.services.crypto import Box

CREDS = "repo_creds"
SEALED = "repo_creds_encrypted"
# What the agent accepts (agent/gitclone.py): a transport that cannot read the host's files
# or run commands.
URL_RE = re.compile(r"^(https?|git|ssh)://[^\s]+$|^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+$")
HASH_RE = re.compile(r"^[0-9a-fA-F]{4,64}$")


def remote_repo(conf: Any) -> Any | None:
    repos = getattr(conf, "repos", None) or []
    return repos[0] if repos and repos[0].url else None


def check_repos(conf: Any) -> None:
    """Refuse what cannot be carried out, naming the field."""
    for i, repo in enumerate(getattr(conf, "repos", None) or []):
        field = f"configuration.repos.{i}"
        if repo.local_path is not None and repo.path not in (".", "./"):
            raise ServerClientError(
                "a local repo is uploaded as the run's code, into the working directory: "
                f"`path: {repo.path}` is not supported for it (use `files` for a second copy)",
                field=f"{field}.path",
            )
        if repo.url is not None and (not URL_RE.match(repo.url) or repo.url.startswith("-")):
            raise ServerClientError(
                f"repo URL {repo.url!r}: only https, http, git and ssh URLs (or user@host:path)"
                " can be cloned",
                field=f"{field}.url",
            )
        if repo.hash is not None and not HASH_RE.match(repo.hash):
            raise ServerClientError(f"repo hash {repo.hash!r} is not a commit hash", field=field)


def job_repo_data(conf: Any) -> dict[str, Any] | None:
    """The job spec's view of a remote repo (no credentials)."""
    repo = remote_repo(conf)
    if repo is None:
        return None
    return {"repo_type": "remote", "repo_url": repo.url, "repo_branch": repo.branch,
            "repo_hash": repo.hash, "path": repo.path, "if_exists": repo.if_exists}  # fmt: skip


def _check_creds(creds: Any) -> dict[str, str]:
    if not isinstance(creds, dict) or set(creds) - {"token", "private_key"} or len(creds) != 1:
        raise ServerClientError(
            "repo_creds: give exactly one of token and private_key", field="run_spec.repo_data"
        )
    value = next(iter(creds.values()))
    if not isinstance(value, str) or not value.strip():
        raise ServerClientError("repo_creds: must be non-empty", field="run_spec.repo_data")
    return dict(creds)


def seal_creds(spec: RunSpec, box: Box) -> RunSpec:
    """The spec as stored: plain credentials replaced with their encryption."""
    data = dict(spec.repo_data or {})
    if CREDS not in data:
        return spec
    creds = _check_creds(data.pop(CREDS))
    data[SEALED] = box.encrypt(json.dumps(creds))
    return spec.model_copy(update={"repo_data": data})


def without_creds(spec: RunSpec) -> RunSpec:
    """The spec as the API shows it (plans, runs): no credentials, plain or sealed."""
    data = spec.repo_data or {}
    if CREDS not in data and SEALED not in data:
        return spec
    shown = {k: v for k, v in data.items() if k not in (CREDS, SEALED)}
    return spec.model_copy(update={"repo_data": shown | {"repo_creds": "<redacted>"}})


def agent_repo(job: JobSpec, run_spec: RunSpec, box: Box) -> dict[str, Any] | None:
    """The start request's `repo`, credentials decrypted for the agent."""
    data = job.repo_data or {}
    if data.get("repo_type") != "remote":
        return None
    out: dict[str, Any] = {
        "url": data["repo_url"],
        "branch": data.get("repo_branch"),
        "hash": data.get("repo_hash"),
        "path": data.get("path") or ".",
        "if_exists": data.get("if_exists") or "error",
        "single_branch": bool(job.single_branch),
    }
    sealed = (run_spec.repo_data or {}).get(SEALED)
    if sealed:
        out.update(json.loads(box.decrypt(sealed)))
    return out
