"""`-P/--repo`, `--repo-branch`, `--repo-hash`, `-t/--token`, `--git-identity` of `dstack apply`.

`-P` replaces the configuration's `repos` (a local path, relative to the current directory,
or a Git URL); `--repo-branch`/`--repo-hash` set the branch and commit of the repo in use.
The token or the SSH key travels with the apply (`run_spec.repo_data.repo_creds`); the server
keeps it encrypted and gives it only to the agent that clones the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dstack.cli.common import CLIError


def add_repo_flags(g: Any) -> None:
    g.add_argument(
        "-P",
        "--repo",
        metavar="REPO",
        help="local path (relative to the current directory) or Git URL; replaces `repos`",
    )
    g.add_argument("--repo-branch", metavar="BRANCH", help="the repo's branch")
    g.add_argument("--repo-hash", metavar="HASH", help="the repo's commit")
    g.add_argument(
        "-t",
        "--token",
        dest="repo_token",
        metavar="OAUTH_TOKEN",
        help="token for a private repo (HTTPS)",
    )
    g.add_argument("--git-identity", metavar="SSH_PRIVATE_KEY",
                   help="SSH private key for a private repo")  # fmt: skip


def apply_repo_flags(out: dict[str, Any], args: argparse.Namespace) -> None:
    repo = getattr(args, "repo", None)
    if repo and getattr(args, "no_repo", False):
        raise CLIError("--repo and --no-repo are mutually exclusive")
    if repo:
        from dstack.models.mounts import RepoSpec

        try:
            spec = RepoSpec.model_validate(repo).model_dump(mode="json")
        except ValueError as e:
            raise CLIError(f"--repo {repo}: {e}") from None
        if spec.get("local_path"):
            spec["local_path"] = str(Path(spec["local_path"]).expanduser().resolve())
        out["repos"] = [spec]
    for flag, key in (("repo_branch", "branch"), ("repo_hash", "hash")):
        value = getattr(args, flag, None)
        if value is None:
            continue
        if not out.get("repos"):
            raise CLIError(f"--{flag.replace('_', '-')} needs a repo (`repos` or --repo)")
        entry = out["repos"][0]
        out["repos"] = [dict(entry, **{key: value}) if isinstance(entry, dict) else entry]
        if not isinstance(entry, dict):
            raise CLIError(f"--{flag.replace('_', '-')}: the repo entry is not a mapping")


def repo_creds(args: argparse.Namespace) -> dict[str, str] | None:
    token, identity = getattr(args, "repo_token", None), getattr(args, "git_identity", None)
    if token and identity:
        raise CLIError("-t/--token and --git-identity are mutually exclusive")
    if token:
        return {"token": token}
    if identity:
        try:
            return {"private_key": Path(identity).expanduser().read_text()}
        except OSError as e:
            raise CLIError(f"--git-identity {identity}: {e}") from None
    return None


def code_root(configuration: dict[str, Any], config_path: str) -> Path | None:
    """What the CLI uploads as the run's code: the working directory, the `local_path` repo,
    or nothing for a remote repo (the host clones it)."""
    repos = configuration.get("repos") or []
    if not repos:
        return Path.cwd()
    repo = repos[0]
    if repo.get("url"):
        return None
    base = Path.cwd() if config_path == "-" else Path(config_path).resolve().parent
    root = Path(repo["local_path"]).expanduser()
    root = root if root.is_absolute() else base / root
    if not root.is_dir():
        raise CLIError(f"repos: {repo['local_path']} is not a directory ({root})")
    return root
