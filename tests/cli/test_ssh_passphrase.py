"""Whether attach's batch-mode ssh can use a key: real keys from ssh-keygen, the agent and
terminal answers swapped in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dstack.cli import ssh_passphrase
from dstack.cli.ssh_passphrase import batch_mode, needs_passphrase

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


def _key(tmp_path: Path, name: str, passphrase: str) -> tuple[Path, str]:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)],
                   check=True)  # fmt: skip
    return path, (tmp_path / f"{name}.pub").read_text().strip()


def test_needs_passphrase(tmp_path: Path) -> None:
    assert needs_passphrase(_key(tmp_path, "locked", "s3cret")[0])
    assert not needs_passphrase(_key(tmp_path, "open", "")[0])


def test_batch_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked, locked_pub = _key(tmp_path, "locked", "s3cret")
    open_, open_pub = _key(tmp_path, "open", "")
    monkeypatch.setattr(ssh_passphrase, "agent_holds", lambda public: False)
    monkeypatch.setattr(ssh_passphrase, "interactive", lambda: False)
    assert batch_mode(open_, open_pub) == (True, None)
    batch, hint = batch_mode(locked, locked_pub)
    assert (
        batch
        and hint == f"the SSH key {locked} has a passphrase: run `ssh-add {locked}` and try again"
    )
    monkeypatch.setattr(ssh_passphrase, "interactive", lambda: True)
    assert batch_mode(locked, locked_pub) == (False, None)  # ssh asks on the terminal
    monkeypatch.setattr(ssh_passphrase, "agent_holds", lambda public: public == locked_pub)
    assert batch_mode(locked, locked_pub) == (True, None)


def test_agent_holds_needs_an_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    assert not ssh_passphrase.agent_holds("ssh-ed25519 AAAA x")
