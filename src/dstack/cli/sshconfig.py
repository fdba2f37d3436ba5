"""The user's side of `ssh <run>`: a key pair, `~/.dstack/ssh/config` with one `Host` block per
attached run, and one `Include` line in `~/.ssh/config`.

Why this shape: the user's own `ssh`, `scp`, `rsync` and VS Code Remote-SSH all read
`~/.ssh/config`, so one Include there (added once, with consent) makes every run reachable by
name, while everything dstack writes lives in its own file, in blocks between markers, so that
rewriting or removing a run's block never touches a line the user wrote. Paths are absolute
(OpenSSH expands `~` from the password database, not `$HOME`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dstack.cli.common import CLIError

INCLUDE_MARKER = "# Added by dstack: `ssh <run>` for attached runs (remove both lines to undo)"
BLOCK_START = "# >>> dstack run {alias}"
BLOCK_END = "# <<< dstack run {alias}"
ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def home() -> Path:
    return Path(os.environ.get("HOME") or os.path.expanduser("~"))


def dstack_ssh_dir() -> Path:
    return home() / ".dstack" / "ssh"


def dstack_ssh_config() -> Path:
    return dstack_ssh_dir() / "config"


def user_ssh_config() -> Path:
    return home() / ".ssh" / "config"


# --- keys ------------------------------------------------------------------------------------


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _check_private(path: Path) -> None:
    """A private key readable by others is refused by ssh and must not stay so: tighten it."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o600)


def user_key(identity: str | None = None) -> tuple[Path, str]:
    """(private key path, public key line) of the key the user's runs are submitted with:
    `--ssh-identity`, else `~/.dstack/ssh/id_rsa`, created on first use (mode 0600)."""
    if identity:
        private = Path(identity).expanduser().resolve()
        if not private.is_file():
            raise CLIError(f"SSH identity {identity} does not exist")
        _check_private(private)
        return private, _public_of(private)
    private = dstack_ssh_dir() / "id_rsa"
    if not private.exists():
        if shutil.which("ssh-keygen") is None:
            raise CLIError("ssh-keygen is not installed; install OpenSSH or pass --ssh-identity")
        _private_dir(private.parent)
        old_umask = os.umask(0o077)  # no moment where the new key is readable by others
        try:
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "rsa", "-b", "3072", "-N", "", "-C", "dstack",
                 "-f", str(private)],
                check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as e:
            raise CLIError(f"cannot create the SSH key {private}: {e}") from e
        finally:
            os.umask(old_umask)
    _check_private(private)
    return private, _public_of(private)


def _public_of(private: Path) -> str:
    pub = private.with_name(private.name + ".pub")
    if pub.is_file():
        return pub.read_text().strip()
    try:
        out = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(private)],
            check=True, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        raise CLIError(
            f"cannot read the public key of {private}: {e}; if the key has a passphrase, "
            f"put its public key beside it as {pub.name}"
        ) from e
    return out.stdout.strip()


# --- ~/.ssh/config ---------------------------------------------------------------------------


def _quote(path: Path) -> str:
    text = str(path)
    return f'"{text}"' if " " in text else text


def include_line(target: Path | None = None) -> str:
    return f"Include {_quote(target or dstack_ssh_config())}"


def has_include(text: str, target: Path | None = None) -> bool:
    wanted = include_line(target)
    return any(line.strip() == wanted for line in text.splitlines())


def add_include(text: str, target: Path | None = None) -> str:
    """Prepend the Include (it must precede every `Host`/`Match` block to apply globally);
    a file that already has it is returned unchanged."""
    if has_include(text, target):
        return text
    return f"{INCLUDE_MARKER}\n{include_line(target)}\n\n{text}"


def remove_include(text: str, target: Path | None = None) -> str:
    """Undo add_include exactly: only our two lines and the blank line we added go."""
    lines = text.splitlines(keepends=True)
    wanted = include_line(target)
    out: list[str] = []
    skip_blank = False
    for line in lines:
        stripped = line.strip()
        if stripped in (INCLUDE_MARKER, wanted):
            skip_blank = True
            continue
        if skip_blank and stripped == "":
            skip_blank = False
            continue
        skip_blank = False
        out.append(line)
    return "".join(out)


def _write_private(path: Path, text: str) -> None:
    _private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def install_include(path: Path | None = None) -> bool:
    """Add the Include to ~/.ssh/config; True if the file changed."""
    path = path or user_ssh_config()
    text = path.read_text() if path.exists() else ""
    new = add_include(text)
    if new == text:
        return False
    _write_private(path, new)
    return True


def uninstall_include(path: Path | None = None) -> bool:
    path = path or user_ssh_config()
    if not path.exists():
        return False
    text = path.read_text()
    new = remove_include(text)
    if new == text:
        return False
    _write_private(path, new)
    return True


# --- ~/.dstack/ssh/config --------------------------------------------------------------------


@dataclass(frozen=True)
class SSHHost:
    """One `Host` block: the address, and the block to jump through to reach it, if any; or,
    with `proxy_command`, no address at all: the command carries the connection (the server
    relay, `dstack ssh-proxy`)."""

    alias: str
    hostname: str
    port: int
    user: str
    identity: Path
    proxy_jump: str | None = None
    proxy_command: str | None = None

    def render(self) -> str:
        lines = [f"Host {self.alias}"]
        if not self.proxy_command:
            lines += [f"    HostName {self.hostname}", f"    Port {self.port}"]
        lines += [
            f"    User {self.user}",
            f"    IdentityFile {_quote(self.identity)}",
            "    IdentitiesOnly yes",
            "    StrictHostKeyChecking no",
            "    UserKnownHostsFile /dev/null",
            "    LogLevel ERROR",
            "    ConnectTimeout 10",
            "    ServerAliveInterval 15",
        ]
        if self.proxy_jump:
            lines.append(f"    ProxyJump {self.proxy_jump}")
        if self.proxy_command:
            lines.append(f"    ProxyCommand {self.proxy_command}")
        return "\n".join(lines) + "\n"


def stopped_host(alias: str, message: str) -> str:
    """A block that makes `ssh <run>` fail at once with MESSAGE instead of hanging or
    answering `Could not resolve hostname` once the run is gone."""
    safe = message.replace("'", "").replace('"', "").replace("%", "%%")
    return (
        f"Host {alias}\n"
        f"    ProxyCommand sh -c 'echo \"dstack: {safe}\" >&2; exit 1'\n"
        "    LogLevel QUIET\n"
    )


def _block_bounds(lines: list[str], alias: str) -> tuple[int, int] | None:
    start, end = BLOCK_START.format(alias=alias), BLOCK_END.format(alias=alias)
    try:
        i = next(n for n, line in enumerate(lines) if line.rstrip("\n") == start)
    except StopIteration:
        return None
    for j in range(i + 1, len(lines)):
        if lines[j].rstrip("\n") == end:
            return i, j
    return i, len(lines) - 1


def set_block(text: str, alias: str, body: str) -> str:
    """Replace (or append) the run's block; every other line stays as it was."""
    if not ALIAS_RE.match(alias):
        raise ValueError(f"invalid host alias {alias!r}")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    block = [BLOCK_START.format(alias=alias) + "\n", *body.splitlines(keepends=True)]
    block.append(BLOCK_END.format(alias=alias) + "\n")
    bounds = _block_bounds(lines, alias)
    if bounds is None:
        return "".join(lines + block)
    i, j = bounds
    return "".join(lines[:i] + block + lines[j + 1 :])


def remove_block(text: str, alias: str) -> str:
    lines = text.splitlines(keepends=True)
    bounds = _block_bounds(lines, alias)
    if bounds is None:
        return text
    i, j = bounds
    return "".join(lines[:i] + lines[j + 1 :])


def has_block(text: str, alias: str) -> bool:
    return _block_bounds(text.splitlines(keepends=True), alias) is not None


def write_hosts(alias: str, hosts: list[SSHHost], path: Path | None = None) -> None:
    _update(path, lambda text: set_block(text, alias, "".join(h.render() for h in hosts)))


def mark_stopped(alias: str, message: str, path: Path | None = None) -> None:
    """Only a run dstack wrote a block for gets the failing stub."""
    path = path or dstack_ssh_config()
    if path.exists() and has_block(path.read_text(), alias):
        _update(path, lambda text: set_block(text, alias, stopped_host(alias, message)))


def forget(alias: str, path: Path | None = None) -> None:
    _update(path, lambda text: remove_block(text, alias))


def _update(path: Path | None, change) -> None:  # noqa: ANN001
    path = path or dstack_ssh_config()
    text = path.read_text() if path.exists() else ""
    new = change(text)
    if new != text or not path.exists():
        _write_private(path, new)
