"""Finding the user's `profiles.yml` and picking the profile `--profile` names.

A CLI concern, not the models': where to look depends on the directory the user runs
`dstack` in and on their home directory, which the server never sees. The file's contents
are validated by `models.profiles.ProfilesConfig`, read by `models.loading`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dstack.models.loading import load_yaml_model
from dstack.models.profiles import ProfilesConfig


def profile_paths() -> list[Path]:
    """Where `profiles.yml` may be, first match wins: the project directory, then home."""
    return [
        Path.cwd() / ".dstack" / "profiles.yml",
        Path.cwd() / ".dstack" / "profiles.yaml",
        Path.home() / ".dstack" / "profiles.yml",
    ]


def load_profiles(paths: list[Path] | None = None) -> ProfilesConfig:
    """The first existing file among `paths` (default: `profile_paths()`); none is no profiles."""
    for path in profile_paths() if paths is None else paths:
        if path.is_file():
            return load_yaml_model(path, ProfilesConfig)
    return ProfilesConfig()


def selected_profile(args: argparse.Namespace) -> dict[str, Any] | None:
    """The profile `--profile` names (else the one marked `default: true`) as JSON, or None
    with `--no-profile` or when there is none."""
    if getattr(args, "no_profile", False):
        return None
    profile = load_profiles().find(getattr(args, "profile", None))
    return profile.model_dump(mode="json") if profile is not None else None
