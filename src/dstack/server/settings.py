"""Server settings, read once from the environment.

Every knob has an environment variable so tests and operators can change it without code; the
names follow the original's where it had one (`DSTACK_SERVER_DIR`, `DSTACK_DATABASE_URL`, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def _flag_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _backoff_env() -> tuple[float, ...]:
    raw = os.environ.get("DSTACK_SERVER_RETRY_BACKOFF")
    if not raw:
        return (15, 30, 60, 120, 300, 600)
    return tuple(float(x) for x in raw.split(","))


@dataclass(frozen=True)
class Settings:
    server_dir: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 3000
    admin_token: str | None = None
    code_upload_limit: int = 2 * 1024 * 1024
    # Any other API body (JSON): refused (413) above this, before it is read.
    api_max_body: int = 8 * 1024 * 1024
    # Reconcilers wake at once on changes; the resync period only catches what a wake missed.
    resync_seconds: float = 2.0
    running_job_poll_seconds: float = 0.5
    lease_seconds: float = 30.0
    agent_unreachable_grace_seconds: float = 120.0
    instance_check_seconds: float = 10.0
    retry_backoff: tuple[float, ...] = field(default=(15, 30, 60, 120, 300, 600))
    terminate_grace_seconds: float = 10.0
    local_backend_enabled: bool = True
    # The one project the local backend (the server's own machine) serves.
    local_backend_project: str = "main"
    # How often each backend's inventory is compared with the instance rows.
    inventory_sweep_seconds: float = 60.0
    # The service proxy (server/proxy): upstream read timeout, body limit, how long a request
    # waits for a replica of a scaled-to-zero service, and how long a replica that failed a
    # request stays out of rotation when no probe says otherwise.
    service_client_timeout: float = 300.0
    service_max_body: int = 64 * 1024 * 1024
    service_hold_seconds: float = 120.0
    service_unhealthy_cooldown: float = 10.0
    # Job metrics (services/metrics.py): how long points are kept while the job runs (at
    # least its utilization_policy window) and after it finished; how often old ones go.
    metrics_running_ttl_seconds: float = 3600.0
    metrics_finished_ttl_seconds: float = 7 * 86400.0
    metrics_sweep_seconds: float = 300.0
    # Prometheus `/metrics` (docs/metrics.md): off unless enabled; served on the API port
    # (admin token required) or, with `metrics_address`, alone on that address (no token).
    prometheus_enabled: bool = False
    metrics_address: str | None = None

    @property
    def data_dir(self) -> Path:
        return self.server_dir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.server_dir / "projects"

    @property
    def local_agent_home(self) -> Path:
        return self.server_dir / "local-agent"


def load_settings(host: str | None = None, port: int | None = None) -> Settings:
    server_dir = Path(
        os.environ.get("DSTACK_SERVER_DIR") or Path.home() / ".dstack" / "server"
    ).expanduser()
    db_url = os.environ.get("DSTACK_DATABASE_URL") or (
        f"sqlite+aiosqlite:///{server_dir / 'data' / 'sqlite.db'}"
    )
    return Settings(
        server_dir=server_dir,
        database_url=db_url,
        host=host or os.environ.get("DSTACK_SERVER_HOST", "127.0.0.1"),
        port=port or _int_env("DSTACK_SERVER_PORT", 3000),
        admin_token=os.environ.get("DSTACK_SERVER_ADMIN_TOKEN") or None,
        code_upload_limit=_int_env("DSTACK_SERVER_CODE_UPLOAD_LIMIT", 2 * 1024 * 1024),
        api_max_body=_int_env("DSTACK_SERVER_MAX_BODY", 8 * 1024 * 1024),
        resync_seconds=_float_env("DSTACK_SERVER_RESYNC_SECONDS", 2.0),
        # How long a claimed row (or a cluster-wide task) stays with a server replica that
        # stopped renewing it: a replica killed mid-pass is replaced after this long.
        lease_seconds=_float_env("DSTACK_SERVER_LEASE_SECONDS", 30.0),
        running_job_poll_seconds=_float_env("DSTACK_SERVER_JOB_POLL_SECONDS", 0.5),
        agent_unreachable_grace_seconds=_float_env("DSTACK_SERVER_UNREACHABLE_GRACE", 120.0),
        instance_check_seconds=_float_env("DSTACK_SERVER_INSTANCE_CHECK_SECONDS", 10.0),
        retry_backoff=_backoff_env(),
        local_backend_enabled=os.environ.get("DSTACK_SERVER_LOCAL_BACKEND", "1") != "0",
        local_backend_project=os.environ.get("DSTACK_SERVER_LOCAL_BACKEND_PROJECT") or "main",
        inventory_sweep_seconds=_float_env("DSTACK_SERVER_INVENTORY_SWEEP_SECONDS", 60.0),
        service_client_timeout=_float_env("DSTACK_SERVICE_CLIENT_TIMEOUT", 300.0),
        service_max_body=_int_env("DSTACK_SERVICE_MAX_BODY", 64 * 1024 * 1024),
        service_hold_seconds=_float_env("DSTACK_SERVICE_HOLD_SECONDS", 120.0),
        service_unhealthy_cooldown=_float_env("DSTACK_SERVICE_UNHEALTHY_COOLDOWN", 10.0),
        metrics_running_ttl_seconds=_float_env("DSTACK_SERVER_METRICS_RUNNING_TTL_SECONDS", 3600),
        metrics_finished_ttl_seconds=_float_env(
            "DSTACK_SERVER_METRICS_FINISHED_TTL_SECONDS", 7 * 86400.0
        ),
        metrics_sweep_seconds=_float_env("DSTACK_SERVER_METRICS_SWEEP_SECONDS", 300.0),
        prometheus_enabled=_flag_env("DSTACK_ENABLE_PROMETHEUS_METRICS"),
        metrics_address=os.environ.get("DSTACK_SERVER_METRICS_ADDRESS") or None,
    )
