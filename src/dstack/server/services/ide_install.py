"""Pre-install the IDE's remote server in a dev environment, before `init` runs.

An IDE that connects over SSH (VS Code Remote-SSH, Cursor, Windsurf) looks for its server build
under `~/.<ide>-server/bin/<commit>` and downloads it on first connect when it is missing, which
is slow. When the configuration pins `version`, the job fetches that build itself at startup,
so the first connect finds it in place.

Why a shell step composed into the job's commands rather than an agent-side step: the server
must land in the HOME of the user the job runs as, wherever the job runs (inside the container
on the docker runtime, on the host on the process runtime). Only the job's own shell is there
in both cases; the agent sits outside the container. The step's output is the job's output, so
its one-line warning reaches `dstack logs` and the attached CLI with no new plumbing, and the
agent does not change.

The step never fails the job: a missing tool, no network or a 404 prints
`dstack: warning: ...` and the job goes on to `init` (the IDE then installs its server itself).
It prints to stdout, not stderr: the agent pumps the two pipes separately, and stdout keeps the
warning in order with the echo lines that follow it.

Download URLs are templates with `{commit}`, `{version}` and `{arch}` (`x64`/`arm64`, from
`uname -m` at run time). Each can be replaced through the server's environment
(`DSTACK_VSCODE_SERVER_URL_TEMPLATE`, `DSTACK_CURSOR_SERVER_URL_TEMPLATE`,
`DSTACK_WINDSURF_SERVER_URL_TEMPLATE`), e.g. to point at a mirror for air-gapped hosts.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

ARCH_PLACEHOLDER = "{arch}"
# The vendors' arch names for Linux server builds, and the machine types (`uname -m`) of each.
ARCHES = {"x64": ("x86_64", "amd64"), "arm64": ("aarch64", "arm64")}
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class IdeServer:
    """Where one IDE keeps its server builds and where it downloads them from."""

    ide: str
    name: str
    folder: str  # under HOME; the build goes to <folder>/bin/<commit>
    url_template: str
    env_var: str
    markers: tuple[str, ...] = ()  # empty files the IDE expects next to an unpacked build


IDE_SERVERS: dict[str, IdeServer] = {
    # `0` in the build folder: the "server is unpacked" marker Remote-SSH setups write.
    "vscode": IdeServer(
        "vscode",
        "VS Code",
        ".vscode-server",
        "https://update.code.visualstudio.com/commit:{commit}/server-linux-{arch}/stable",
        "DSTACK_VSCODE_SERVER_URL_TEMPLATE",
        markers=("0",),
    ),
    "cursor": IdeServer(
        "cursor",
        "Cursor",
        ".cursor-server",
        "https://cursor.blob.core.windows.net/remote-releases/{commit}/vscode-reh-linux-{arch}.tar.gz",
        "DSTACK_CURSOR_SERVER_URL_TEMPLATE",
    ),
    "windsurf": IdeServer(
        "windsurf",
        "Windsurf",
        ".windsurf-server",
        "https://windsurf-stable.codeiumdata.com/linux-reh-{arch}/stable/{commit}"
        "/windsurf-reh-linux-{arch}-{version}.tar.gz",
        "DSTACK_WINDSURF_SERVER_URL_TEMPLATE",
    ),
}

IDE_NAMES = {ide: server.name for ide, server in IDE_SERVERS.items()}


def split_version(ide: str, version: str) -> tuple[str, str]:
    """(release version, commit). Windsurf's `version` is `<version>@<commit>`; VS Code's and
    Cursor's is the commit itself, which also names the build folder."""
    if ide == "windsurf" and "@" in version:
        release, commit = version.rsplit("@", 1)
        return release, commit
    return version, version


def url_template(server: IdeServer, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(server.env_var) or server.url_template


def download_url(
    ide: str, version: str, arch: str, environ: Mapping[str, str] | None = None
) -> str:
    """The URL of one build; plain replacement, so a mirror's template with other braces in it
    cannot break formatting."""
    server = IDE_SERVERS[ide]
    release, commit = split_version(ide, version)
    url = url_template(server, environ).replace("{commit}", commit).replace("{version}", release)
    return url.replace(ARCH_PLACEHOLDER, arch)


def build_dir(ide: str, version: str) -> str:
    """The build folder, relative to HOME: `.vscode-server/bin/<commit>` and the like."""
    return f"{IDE_SERVERS[ide].folder}/bin/{split_version(ide, version)[1]}"


def install_command(
    ide: str | None, version: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """One shell command (POSIX sh, exits 0) that pre-installs the build, or None when there is
    nothing to install (no `ide`, no `version`, or an IDE without a remote server build)."""
    if not ide or not version or ide not in IDE_SERVERS:
        return None
    server = IDE_SERVERS[ide]
    release, commit = split_version(ide, version)
    if not (_SAFE_PART.match(commit) and _SAFE_PART.match(release)):
        # It becomes a folder name: no `/`, no `..`, nothing the shell would read.
        warning = f"dstack: warning: not pre-installing the {server.name} server: bad version"
        return f"echo {shlex.quote(warning + ' ' + repr(version))}"
    script = "\n".join(_script(server, ide, version, environ))
    # Its own `sh`: POSIX whatever the job's `shell` is; `|| true`: it never stops the job.
    return f"sh -c {shlex.quote(script)} dstack-ide-install || true"


def _url_expr(ide: str, version: str, environ: Mapping[str, str] | None) -> str:
    """The URL as a shell word: each literal part quoted, `"$arch"` between them."""
    parts = download_url(ide, version, ARCH_PLACEHOLDER, environ).split(ARCH_PLACEHOLDER)
    return '"$arch"'.join(shlex.quote(p) if p else "" for p in parts) or "''"


def _script(
    server: IdeServer, ide: str, version: str, environ: Mapping[str, str] | None
) -> list[str]:
    """Skip if present → pick the arch → fetch → unpack into a temporary sibling → rename.

    The rename makes the build appear whole or not at all, so a job stopped midway, or two dev
    environments sharing one HOME (the process runtime), never leave a half-unpacked build that
    a later run would take as installed. (Only SIGKILL can leave the temporary folder.)
    """
    what = f"the {server.name} server"
    case = " ".join(f"{'|'.join(ms)}) arch={a} ;;" for a, ms in ARCHES.items())
    commit = split_version(ide, version)[1]
    return [
        f"warn() {{ printf 'dstack: warning: could not pre-install {what} (%s); "
        "the IDE will install it on first connect\\n' \"$(printf '%s' \"$1\" | tr '\\n' ' ')\"; "
        '[ -n "$tmp" ] && rm -rf "$tmp" "$tmp.tar.gz"; exit 0; }',
        "tmp=",
        # Stopped mid-download (the job's process group gets SIGTERM): leave nothing behind.
        """trap '[ -n "$tmp" ] && rm -rf "$tmp" "$tmp.tar.gz"; exit 143' HUP INT TERM""",
        '[ -n "$HOME" ] || warn "HOME is not set"',
        f'd="$HOME"/{shlex.quote(build_dir(ide, version))}',
        '[ -e "$d" ] && exit 0',
        f'case "$(uname -m)" in {case} *) arch= ;; esac',
        '[ -n "$arch" ] || warn "no server build for machine type $(uname -m)"',
        f"url={_url_expr(ide, version, environ)}",
        # A sibling of bin/, not inside it: a job killed midway leaves no stray build folder.
        f'tmp="$HOME"/{shlex.quote(server.folder + "/.dstack-" + commit)}-$$',
        'mkdir -p "$tmp" "${d%/*}" || warn "cannot create $tmp"',
        *_fetch_lines(),
        'command -v tar >/dev/null 2>&1 || warn "tar is not installed"',
        'err=$(tar -xzof "$tmp.tar.gz" -C "$tmp" --strip-components=1 2>&1)'
        ' || warn "$url is not a tar.gz archive: $err"',
        *[f'touch "$tmp"/{shlex.quote(m)}' for m in server.markers],
        'rm -f "$tmp.tar.gz"',
        # Lost a race with another job: its build is in place, this copy is not needed.
        'if [ -e "$d" ]; then rm -rf "$tmp"; else mv "$tmp" "$d" || warn "cannot create $d"; fi',
        'rm -rf "$d/${tmp##*/}"',
        f'echo "dstack: pre-installed {what} in $d"',
    ]


# urllib for hosts with neither curl nor wget (SSH fleet hosts always have python3).
_PY_FETCH = (
    "import shutil, sys, urllib.request\n"
    "try:\n"
    "    with urllib.request.urlopen(sys.argv[1], timeout=30) as r, "
    'open(sys.argv[2], "wb") as f:\n'
    "        shutil.copyfileobj(r, f)\n"
    "except Exception as e:\n"
    "    sys.exit(str(e))"
)


def _fetch_lines() -> list[str]:
    """Download `$url` to `$tmp.tar.gz` with curl, else wget, else python3's urllib; on failure
    the tool's own one-line reason goes into the warning."""
    py = shlex.quote(_PY_FETCH)
    return [
        "if command -v curl >/dev/null 2>&1; then",
        '  err=$(curl -fsSL --connect-timeout 20 -o "$tmp.tar.gz" "$url" 2>&1)'
        ' || warn "$url: $err"',
        "elif command -v wget >/dev/null 2>&1; then",
        '  err=$(wget -q -T 20 -t 2 -O "$tmp.tar.gz" "$url" 2>&1)'
        ' || warn "$url: wget exit $? $err"',
        "elif command -v python3 >/dev/null 2>&1; then",
        f'  err=$(python3 -c {py} "$url" "$tmp.tar.gz" 2>&1) || warn "$url: $err"',
        "else",
        '  warn "no curl, wget or python3 to download $url"',
        "fi",
    ]
