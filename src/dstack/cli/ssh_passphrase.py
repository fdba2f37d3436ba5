"""Keys with a passphrase: the attach tunnel runs `ssh` in batch mode (no prompts mixed into
the CLI's output), which fails on such a key unless the user's ssh-agent holds it. So before
the tunnel starts, find out whether the key needs a passphrase the agent cannot supply: on a
terminal, let `ssh` ask for it; elsewhere, fail with the one command that fixes it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def needs_passphrase(private: Path) -> bool:
    """True when the key cannot be read with an empty passphrase."""
    if shutil.which("ssh-keygen") is None:
        return False
    try:
        r = subprocess.run(
            ["ssh-keygen", "-y", "-P", "", "-f", str(private)],
            capture_output=True, stdin=subprocess.DEVNULL, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode != 0


def agent_holds(public: str) -> bool:
    """True when the running ssh-agent (if any) has this public key loaded."""
    if not os.environ.get("SSH_AUTH_SOCK") or shutil.which("ssh-add") is None:
        return False
    try:
        r = subprocess.run(
            ["ssh-add", "-L"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    key = " ".join(public.split()[:2])
    return any(" ".join(line.split()[:2]) == key for line in r.stdout.splitlines())


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def batch_mode(private: Path, public: str) -> tuple[bool, str | None]:
    """(run ssh in batch mode?, hint for an error). A key with a passphrase the agent lacks is
    asked for on a terminal (no batch mode); without one, the hint names `ssh-add`."""
    if not needs_passphrase(private) or agent_holds(public):
        return True, None
    hint = f"the SSH key {private} has a passphrase: run `ssh-add {private}` and try again"
    return (False, None) if interactive() else (True, hint)
