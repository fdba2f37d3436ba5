"""The server's tables.

Rows that reconcilers drive carry lease columns (`lock_owner`, `lock_token`, `lock_expires_at`)
and a `version` that every write bumps: a writer that read an old version, or lost its lease,
updates zero rows and discards its work. Specs and observations are JSON text so the schema
does not churn with every configuration field.
"""

# No `from __future__ import annotations` here: SQLAlchemy would `eval` each column's string
# annotation (~460 of them) when mapping the classes, ~20% of this module's import at start-up.
import secrets
from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC on every database: SQLite keeps no zone, so one is put back on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
            if getattr(dialect, "name", "") == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


def new_change_tag() -> int:
    """A fresh random tag for a written row (`change_tag`): random rather than counted, so
    server replicas need not agree on a sequence, and applied by SQLAlchemy to every ORM flush
    and Core/ORM `update()`, bulk ones included (only a statement that sets the column itself
    would keep it: none does)."""
    return secrets.randbits(63)


def change_tag_column() -> Mapped[int]:
    """Changes on every insert and update of the row: the runs/list cache
    (services/runs_page.py) reuses a run's serialized JSON only while its run and job rows
    carry the tags it was built from (migration 0020)."""
    return mapped_column(
        BigInteger, default=new_change_tag, onupdate=new_change_tag, server_default="0"
    )


def _id() -> Mapped[str]:
    return mapped_column(String(36), primary_key=True)


class LeaseMixin:
    """Claim columns shared by every reconciled table (DESIGN.md, 'How state moves')."""

    lock_owner: Mapped[str | None] = mapped_column(String(100), default=None)
    lock_token: Mapped[str | None] = mapped_column(String(36), default=None)
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_processed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1)
    # Set by whoever changes something this row's reconciler must react to; the claim clears
    # it. A dirty row is due at once, whatever its resync interval.
    dirty: Mapped[bool] = mapped_column(Boolean, default=True)


def claim_index(table: str) -> Index:
    """The index a reconciler's claim and idle-wait queries use (reconcilers/base.py): rows in
    an active status (`status IN (...)`, a few rows among the many finished ones), each status's
    oldest `last_processed_at` first. `dirty` and `lock_expires_at` are filtered on the rows
    this range finds, so they need no index of their own."""
    return Index(f"ix_{table}_claim", "status", "last_processed_at")


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(50), unique=True)
    global_role: Mapped[str] = mapped_column(String(20), default="user")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(50), unique=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    is_public: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ssh_private_key: Mapped[str | None] = mapped_column(Text)
    ssh_public_key: Mapped[str | None] = mapped_column(Text)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class Member(Base):
    __tablename__ = "members"
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    project_role: Mapped[str] = mapped_column(String(20), default="user")


class Fleet(LeaseMixin, Base):
    __tablename__ = "fleets"
    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    status_message: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[str] = mapped_column(Text)  # FleetSpec JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # The user's changes to the spec, counted (migration 0018; Kubernetes' `generation`, where
    # `version` counts every write): a plan made against an older generation is refused at
    # apply (409), never applied over a change its author did not see.
    generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    __table_args__ = (
        Index(
            "ix_fleets_active_name",
            "project_id",
            "name",
            unique=True,
            sqlite_where=text("deleted = 0"),
            postgresql_where=text("deleted = false"),
        ),
        claim_index("fleets"),
    )


class Instance(LeaseMixin, Base):
    __tablename__ = "instances"
    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    fleet_id: Mapped[str | None] = mapped_column(ForeignKey("fleets.id"))
    instance_num: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str] = mapped_column(String(120))
    backend: Mapped[str] = mapped_column(String(30))
    region: Mapped[str] = mapped_column(String(60), default="")
    status: Mapped[str] = mapped_column(String(20))
    termination_reason: Mapped[str | None] = mapped_column(String(60))
    termination_reason_message: Mapped[str | None] = mapped_column(Text)
    # Why a provisioning host is not up yet, as its backend says (e.g. Slurm's pending reason);
    # shown with the job (`dstack ps`). Migration 0014.
    status_message: Mapped[str | None] = mapped_column(Text)
    unreachable: Mapped[bool] = mapped_column(Boolean, default=False)
    offer: Mapped[str | None] = mapped_column(Text)  # InstanceOfferWithAvailability JSON
    price: Mapped[float] = mapped_column(Float, default=0.0)
    hostname: Mapped[str | None] = mapped_column(String(200))
    agent_url: Mapped[str | None] = mapped_column(String(200))
    agent_token_enc: Mapped[str | None] = mapped_column(Text)
    agent_pid: Mapped[int | None] = mapped_column(Integer)
    host_info: Mapped[str | None] = mapped_column(Text)
    # SSH fleet hosts: hostname, port, user, encrypted private key, proxy jump, agent home and
    # port, fleet env (JSON). The host key recorded on first connection lives here too.
    remote_connection: Mapped[str | None] = mapped_column(Text)
    total_blocks: Mapped[int] = mapped_column(Integer, default=1)
    idle_duration: Mapped[int | None] = mapped_column(Integer)  # seconds, -1 never
    provisioning_job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # The backend type, on an instance of a backend with one live instance per server
    # (`single_instance`): a unique index over live rows keeps it one across server replicas.
    # Migration 0019.
    single_key: Mapped[str | None] = mapped_column(String(100))

    __table_args__ = (
        claim_index("instances"),
        Index(
            "ix_instances_single_live",
            "single_key",
            unique=True,
            sqlite_where=text("status != 'terminated'"),
            postgresql_where=text("status != 'terminated'"),
        ),
    )


class Run(LeaseMixin, Base):
    __tablename__ = "runs"
    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    run_name: Mapped[str] = mapped_column(String(100))
    run_spec: Mapped[str] = mapped_column(Text)  # RunSpec JSON
    status: Mapped[str] = mapped_column(String(20))
    termination_reason: Mapped[str | None] = mapped_column(String(60))
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_abort: Mapped[bool] = mapped_column(Boolean, default=False)
    # `apply --force` against this active run: the RunSpec JSON to submit as a new run of the
    # same name once this one has finished, and who asked (migration 0008).
    replacement_spec: Mapped[str | None] = mapped_column(Text)
    replacement_user_id: Mapped[str | None] = mapped_column(String(36))
    fleet_id: Mapped[str | None] = mapped_column(ForeignKey("fleets.id"))
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resubmission_attempt: Mapped[int] = mapped_column(Integer, default=0)
    next_triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deployment_num: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The user's changes to the spec, counted (migration 0018; Kubernetes' `generation`, where
    # `version` counts every write): a plan made against an older generation is refused at
    # apply (409), never applied over a change its author did not see.
    generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    change_tag: Mapped[int] = change_tag_column()

    __table_args__ = (
        # runs/list: a project's live runs in submission order, read a page at a time.
        Index("ix_runs_list", "project_id", "deleted", "submitted_at", "id"),
        # One active run per (project, name): enforced by the database, not the code.
        Index(
            "ix_runs_active_name",
            "project_id",
            "run_name",
            unique=True,
            sqlite_where=text("status NOT IN ('terminated', 'failed', 'done') AND deleted = 0"),
            postgresql_where=text(
                "status NOT IN ('terminated', 'failed', 'done') AND deleted = false"
            ),
        ),
        claim_index("runs"),
    )


class Job(LeaseMixin, Base):
    __tablename__ = "jobs"
    id: Mapped[str] = _id()  # the job submission id
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    run_name: Mapped[str] = mapped_column(String(100))
    job_num: Mapped[int] = mapped_column(Integer, default=0)
    replica_num: Mapped[int] = mapped_column(Integer, default=0)
    job_name: Mapped[str] = mapped_column(String(120))
    submission_num: Mapped[int] = mapped_column(Integer, default=0)
    deployment_num: Mapped[int] = mapped_column(Integer, default=0)
    job_spec: Mapped[str] = mapped_column(Text)  # JobSpec JSON
    status: Mapped[str] = mapped_column(String(20))
    termination_reason: Mapped[str | None] = mapped_column(String(60))
    termination_reason_message: Mapped[str | None] = mapped_column(Text)
    exit_status: Mapped[int | None] = mapped_column(Integer)
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"))
    used_blocks: Mapped[int] = mapped_column(Integer, default=0)
    job_provisioning_data: Mapped[str | None] = mapped_column(Text)
    job_runtime_data: Mapped[str | None] = mapped_column(Text)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    running_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disconnected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stop_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A stop asked by the run reconciler (user stop, run ending, scale-down); the job
    # reconciler alone turns it into `terminating` with `stop_reason` (migration 0008).
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_abort: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_reason: Mapped[str | None] = mapped_column(String(60))
    # Service replicas (written by the proxy's prober, read by the proxy and `ps -v`):
    # one success streak per probe of the spec, JSON; `ready` once every streak reached its
    # `ready_after`; `unhealthy_at` when the proxy saw the replica reset or refuse a request.
    probe_streaks: Mapped[str | None] = mapped_column(Text)
    ready: Mapped[bool] = mapped_column(Boolean, default=False)
    unhealthy_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Seconds without an SSH connection to the job, as last reported by its agent.
    inactivity_secs: Mapped[int | None] = mapped_column(Integer)
    # The job's volumes as placement resolved them: JSON list of {volume_id, name, path}
    # (migration 0012); NULL: none.
    volumes: Mapped[str | None] = mapped_column(Text)
    # Offers whose new instance failed before the job started, JSON list of
    # models.runs.TriedOffer (migration 0011): placement skips them.
    tried_offers: Mapped[str | None] = mapped_column(Text)
    change_tag: Mapped[int] = change_tag_column()

    __table_args__ = (claim_index("jobs"),)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[str] = _id()
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), index=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor_user: Mapped[str | None] = mapped_column(String(50))
    target_type: Mapped[str] = mapped_column(String(30))
    target_id: Mapped[str] = mapped_column(String(36))
    target_name: Mapped[str] = mapped_column(String(200))
    within_run_id: Mapped[str | None] = mapped_column(String(36), index=True)
    message: Mapped[str] = mapped_column(Text)


class Code(Base):
    __tablename__ = "codes"
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Volume(LeaseMixin, Base):
    """A volume (migration 0012). A network volume has a `backend` and lives in its cloud
    (`external_id`, `provisioning_data` is the backend's record); a directory volume has no
    backend: it belongs to a fleet and is a directory on the one instance of it that first
    used it (`instance_id`, bound then), so runs using it are placed there."""

    __tablename__ = "volumes"
    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(100))
    configuration: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))
    status_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The user's changes to the spec, counted (migration 0018; Kubernetes' `generation`, where
    # `version` counts every write): a plan made against an older generation is refused at
    # apply (409), never applied over a change its author did not see.
    generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    backend: Mapped[str | None] = mapped_column(String(30))
    region: Mapped[str | None] = mapped_column(String(60))
    availability_zone: Mapped[str | None] = mapped_column(String(60))
    size_gb: Mapped[int | None] = mapped_column(Integer)
    external_id: Mapped[str | None] = mapped_column(String(200))
    # Registered by the user (`volume_id`): never deleted in the cloud by the server.
    external: Mapped[bool] = mapped_column(Boolean, default=False)
    provisioning_data: Mapped[str | None] = mapped_column(Text)
    fleet_id: Mapped[str | None] = mapped_column(ForeignKey("fleets.id"))
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"))
    to_be_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # When a job last stopped using it (`auto_cleanup_duration` counts from here).
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Failed backend calls in a row, and when the next may be tried (a backoff, never a spin).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # `dstack volume delete --force` (migration 0013): forget a directory volume whose host's
    # agent cannot be reached, instead of waiting for it.
    force_delete: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index(
            "ix_volumes_active_name",
            "project_id",
            "name",
            unique=True,
            sqlite_where=text("deleted = 0"),
            postgresql_where=text("deleted = false"),
        ),
        claim_index("volumes"),
    )


class VolumeAttachment(Base):
    """A volume attached (or being attached, or detached) to an instance for a job. A network
    volume is attached to at most one live instance; rows are kept after `detached` for the
    history (`dstack volume get`)."""

    __tablename__ = "volume_attachments"
    id: Mapped[str] = _id()
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    status: Mapped[str] = mapped_column(String(20))  # attaching attached detaching detached
    device: Mapped[str | None] = mapped_column(Text)  # where it shows up on the host
    data: Mapped[str | None] = mapped_column(Text)  # the backend's record, JSON
    message: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attached_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    detach_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    detached_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Gateway(LeaseMixin, Base):
    __tablename__ = "gateways"
    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(100))
    configuration: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))
    status_message: Mapped[str | None] = mapped_column(Text)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class ServiceStat(Base):
    """Requests the proxy forwarded to a service, per server process and time bucket.

    Each server process writes its own rows (no write contention between replicas of the
    server); the autoscaler sums every writer's buckets over its window, so all server
    replicas agree on the request rate."""

    __tablename__ = "service_stats"
    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)  # unix seconds // 5 * 5
    writer: Mapped[str] = mapped_column(String(36), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    waiting: Mapped[int] = mapped_column(Integer, default=0)  # held for a scaled-to-zero run


class Backend(Base):
    """A project's backend from the server's `config.yml`: the configuration without its
    secrets in `config`, the credentials encrypted with the server's key in `auth`."""

    __tablename__ = "backends"
    __table_args__ = (Index("ix_backends_project_type", "project_id", "type", unique=True),)
    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    type: Mapped[str] = mapped_column(String(50))
    config: Mapped[str] = mapped_column(Text)
    auth: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Secret(Base):
    """A project's named value for `${{ secrets.NAME }}`; `value` encrypted with the box."""

    __tablename__ = "secrets"
    __table_args__ = (Index("ix_secrets_project_name", "project_id", "name", unique=True),)
    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JobMetricsPoint(Base):
    """One resource sample of a running job, as its agent took it (migration 0017).

    Keyed by (job, sample time in ms): an agent answers the same sample again after a server
    restart, and two server replicas may both fetch it; the key keeps one. `gpus` is JSON: one
    reading per GPU of the job ({util, memory_used_bytes, memory_total_bytes, power_watts,
    temperature_celsius}). Deleted after a retention period (services/metrics.py)."""

    __tablename__ = "job_metrics_points"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    timestamp_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    cpu_usage_percent: Mapped[float | None] = mapped_column(Float)
    memory_usage_bytes: Mapped[int | None] = mapped_column(BigInteger)
    memory_working_set_bytes: Mapped[int | None] = mapped_column(BigInteger)
    gpus: Mapped[str] = mapped_column(Text, default="[]")


class ServerLease(Base):
    """A cluster-wide singleton task (probes, inventory sweep): the server replica that holds
    an unexpired lease runs it; the others wait to take it over (db/cluster.py). Migration
    0019."""

    __tablename__ = "server_leases"
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(100))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
