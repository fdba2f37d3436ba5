"""SSH side of attaching (`dstack apply` attached, `dstack attach`): write the run's `Host`
entries, make sure `~/.ssh/config` includes them (once, with consent), open the tunnel with the
port forwards, and say what is where (cli.md §7 output).

The tunnel opens only once the job says its SSH server listens (port 10022 appears in its
runtime data, or `ssh_error` says why it never will): connecting earlier is what made attached
runs warn "Failed to connect" though `ssh <run>` worked a second later. A job that ends before
(or while) SSH comes up raises JobEnded, which is no news worth a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from dstack.cli import sshconfig
from dstack.cli.common import CLIError, confirm, echo
from dstack.cli.ssh_passphrase import batch_mode
from dstack.cli.ssh_relay import is_local_url, proxy_command, via_server
from dstack.cli.tunnel import JOB_SSH_PORT, RESERVED, Forward, Tunnel, job_hosts, plan_forwards
from dstack.models.runs import Job, JobStatus, Run

DECLINED_FILE = "include-declined"
PUBLISH_WAIT = 30.0  # the agent gives the job's SSH server 10 s, then reports why it has none
END_WAIT = 3.0  # after a failed connect: how long the server may take to see the job ended
POLL = 0.3
# The first looks come sooner: a trivial job often ends, or its SSH server listens, within
# tens of milliseconds of the run turning `running` (a fixed 0.3 s added that to the run).
FIRST_POLL = 0.02


class JobEnded(CLIError):
    """The job finished before its SSH server could be reached."""


@dataclass
class Attachment:
    alias: str
    forwards: list[Forward] = field(default_factory=list)
    tunnel: Tunnel | None = None
    ssh_error: str | None = None
    host: str = "localhost"

    def alive(self) -> bool:
        return self.tunnel is None or self.tunnel.alive()

    def close(self, run: Run | None = None) -> None:
        """Drop the tunnel; a run that has ended gets an entry that says so when used."""
        if self.tunnel is not None:
            if self.tunnel.forwards:
                held = _held_path(self.alias)
                with contextlib.suppress(OSError, ValueError):
                    if json.loads(held.read_text()).get("pid") == os.getpid():
                        held.unlink()
            self.tunnel.close()
            self.tunnel = None
        if run is not None and run.status.is_finished():
            name = run.run_spec.run_name
            sshconfig.mark_stopped(
                self.alias, f"run {name} is {run.status.value}; it no longer accepts SSH"
            )

    def print_summary(self, header: str | None) -> None:
        if header:
            echo(header)
        if self.forwards:
            echo("Forwarded ports (local -> remote):")
            for f in self.forwards:
                echo(f"  - {self.host}:{f.local_port} -> {f.remote_port}")
        if self.ssh_error:
            echo(f"SSH is not available for this job: {self.ssh_error}.")
        else:
            echo(f"To connect to the run via SSH, use `ssh {self.alias}`.")


def alias_for(run: Run, job: Job) -> str:
    """The run's name for job 0 of replica 0, else the job's name `<run>-<job>-<replica>`."""
    spec = job.job_spec
    if spec.replica_num == 0 and spec.job_num == 0:
        return run.run_spec.run_name or spec.job_name
    return spec.job_name


def _same_key(a: str | None, b: str | None) -> bool:
    return bool(a and b) and a.split()[:2] == b.split()[:2]


def ensure_include(yes: bool) -> None:
    """One `Include` in ~/.ssh/config, added with -y or the user's yes; a no is remembered
    (so attaching never asks twice) and `ssh -F ~/.dstack/ssh/config <run>` still works."""
    path = sshconfig.user_ssh_config()
    if path.exists() and sshconfig.has_include(path.read_text()):
        return
    declined = sshconfig.dstack_ssh_dir() / DECLINED_FILE
    hint = (
        f"To use `ssh <run>` directly, add `{sshconfig.include_line()}` at the top of {path}, "
        f"or use `ssh -F {sshconfig.dstack_ssh_config()} <run>`."
    )
    if not yes:
        if declined.exists():
            return
        if not sys.stdin.isatty():
            echo(hint)
            return
        if not confirm(f"Add `{sshconfig.include_line()}` to {path} so that `ssh <run>` works?"):
            declined.parent.mkdir(parents=True, exist_ok=True)
            declined.write_text("declined\n")
            echo(hint)
            return
    sshconfig.install_include(path)


def open_attachment(
    run: Run,
    job: Job,
    *,
    identity: str | None,
    port_overrides: list[str],
    host: str | None,
    yes: bool,
    action: str,
    reload: Callable[[], Run] | None = None,
    server: tuple[str, str] | None = None,
    forced_relay: bool | None = None,
) -> Attachment:
    """Everything `ssh <run>` and the forwards need; raises CLIError on a busy port.

    A docker job's app ports are published on random host ports once its container runs;
    RELOAD fetches the run again until they are known. SERVER (URL, project) lets SSH go
    through the server's relay when the host is not reachable from here (or FORCED_RELAY)."""
    job = _when_ready(run, job, reload)
    sub = job.job_submissions[-1] if job.job_submissions else None
    jpd = sub.job_provisioning_data if sub else None
    jrd = sub.job_runtime_data if sub else None
    alias = alias_for(run, job)
    bind = host or "localhost"
    private, public = sshconfig.user_key(identity)
    if run.run_spec.ssh_key_pub and not _same_key(public, run.run_spec.ssh_key_pub):
        raise CLIError(
            f"User SSH key doesn't match the key of run {run.run_spec.run_name}; "
            "pass the run's key with --ssh-identity"
        )
    relay = _relay_command(run, job, jpd, server, forced_relay)
    hosts, ssh_error = job_hosts(alias, jpd, jrd, private, relay)
    same_network = (
        jpd is not None
        and jpd.backend == "local"
        and job.job_spec.image_name is None
        and (server is None or is_local_url(server[0]))
    )
    forwards = plan_forwards(
        job.job_spec.app_specs,
        port_overrides,
        same_network=same_network,
        host=bind,
        action=action,
        held=_held_forwards(alias, bind),
    )
    published = (jrd.ports or {}) if jrd is not None else {}
    forwards = [
        f if f.direct else replace(f, target=published.get(f.remote_port)) for f in forwards
    ]
    attachment = Attachment(alias, forwards, ssh_error=ssh_error, host=bind)
    if ssh_error:
        if any(not f.direct for f in forwards):
            raise CLIError(f"Failed to {action}: cannot forward ports: {ssh_error}")
        return attachment
    sshconfig.write_hosts(alias, hosts)
    ensure_include(yes)
    batch, hint = batch_mode(private, public)
    tunnel = Tunnel(sshconfig.dstack_ssh_config(), alias, forwards, bind, batch, hint)
    try:
        tunnel.open()
    except CLIError:
        # A job that ends takes its SSH server with it, mid-handshake or before.
        if reload is not None and _ends_soon(job, reload):
            raise JobEnded(f"Run {run.run_spec.run_name} ended before SSH was up") from None
        raise
    attachment.tunnel = tunnel
    _save_held(alias, bind, tunnel.forwards)
    return attachment


def _relay_command(
    run: Run, job: Job, jpd: object, server: tuple[str, str] | None, forced: bool | None
) -> str | None:
    """The ProxyCommand through the server's relay, when SSH should go that way (ssh_relay)."""
    if server is None or jpd is None or not via_server(jpd, server[0], forced):
        return None
    spec = job.job_spec
    name = run.run_spec.run_name or spec.job_name
    return proxy_command(server[0], server[1], name, spec.replica_num, spec.job_num)


def _missing_ports(job: Job) -> list[int]:
    sub = job.job_submissions[-1] if job.job_submissions else None
    jrd = sub.job_runtime_data if sub else None
    if job.job_spec.image_name is None or jrd is None:
        return []
    published = jrd.ports or {}
    wanted = [int(a["port"]) for a in job.job_spec.app_specs if int(a["port"]) not in RESERVED]
    return [p for p in wanted if p not in published]


def _ssh_starting(job: Job) -> bool:
    """Running, its SSH server not listening yet, and no word that it never will."""
    sub = job.job_submissions[-1] if job.job_submissions else None
    jrd = sub.job_runtime_data if sub else None
    if sub is None or jrd is None or sub.status != JobStatus.RUNNING:
        return False
    return JOB_SSH_PORT not in (jrd.ports or {}) and not jrd.ssh_error


def _ended(job: Job) -> bool:
    sub = job.job_submissions[-1] if job.job_submissions else None
    return sub is not None and (sub.status.is_finished() or sub.status == JobStatus.TERMINATING)


def _fresh(job: Job, reload: Callable[[], Run]) -> Job:
    key = (job.job_spec.replica_num, job.job_spec.job_num)
    fresh = reload()
    return next((j for j in fresh.jobs if (j.job_spec.replica_num, j.job_spec.job_num) == key), job)


def _when_ready(run: Run, job: Job, reload: Callable[[], Run] | None) -> Job:
    """The job once its SSH server listens and a docker job's ports are published."""
    import time

    deadline = time.monotonic() + PUBLISH_WAIT
    delay = FIRST_POLL
    while reload is not None and (_missing_ports(job) or _ssh_starting(job)):
        if _ended(job) or time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(POLL, delay * 1.5)
        job = _fresh(job, reload)
    if _ended(job):
        raise JobEnded(f"Run {run.run_spec.run_name} ended before SSH was up")
    missing = _missing_ports(job)
    if missing:
        raise CLIError(f"Port {missing[0]} of the run's container is not published yet; retry")
    return job


def _ends_soon(job: Job, reload: Callable[[], Run]) -> bool:
    import time

    deadline = time.monotonic() + END_WAIT
    delay = FIRST_POLL
    while True:
        try:
            job = _fresh(job, reload)
        except Exception:  # noqa: BLE001 - the connect error is what gets reported then
            return False
        if _ended(job):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(POLL, delay * 1.5)


def _held_path(alias: str) -> Path:
    return sshconfig.dstack_ssh_dir() / f"{alias}.forwards.json"


def _held_forwards(alias: str, bind: str) -> dict[int, int]:
    """Forwards a live attach of the same job holds (a second attach reuses them)."""
    import json
    import os

    try:
        data = json.loads(_held_path(alias).read_text())
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if data.get("host") != bind:
        return {}
    return {int(k): int(v) for k, v in (data.get("forwards") or {}).items()}


def _save_held(alias: str, bind: str, forwards: list[Forward]) -> None:
    import json
    import os

    if not forwards:
        return
    data = {
        "pid": os.getpid(),
        "host": bind,
        "forwards": {str(f.local_port): f.remote_port for f in forwards},
    }
    _held_path(alias).write_text(json.dumps(data))


