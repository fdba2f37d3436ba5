"""Runs that only a change moves are not resynced every period (reconcilers/base.py `lazy`,
run_worker.py): a task past `pending` reads nothing but its jobs and its own requests, each
written with `dirty`, so the claim leaves it alone until it is marked or the safety net's
period (`LAZY_RESYNCS` resyncs) has passed; a service or a pending run keeps its interval.
The loop's idle wait reckons the same way: it neither spins on a lazy row nor oversleeps a
service's due time. On SQLite and on PostgreSQL (test_claim.py's databases)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from pathlib import Path

from dstack.models.configurations import parse_configuration
from dstack.models.runs import RunSpec
from dstack.models.wire import utcnow
from dstack.server.reconcilers.due_rows import LAZY_RESYNCS
from dstack.server.reconcilers.run_worker import _SERVICE_MARK, RunReconciler

from .test_claim import add_runs, db_url, make_ctx, pg_cluster, seed_owners  # noqa: F401

TASK = '{"run_name":"x","configuration":{"type":"task","commands":["echo"]}}'
SERVICE = '{"run_name":"x","configuration":{"port":80,"type":"service","commands":["s"]}}'
RESYNC = 2.0


def _loop(url: str, tmp_path: Path) -> RunReconciler:
    ctx = make_ctx(url, tmp_path)
    ctx.settings = dataclasses.replace(ctx.settings, resync_seconds=RESYNC)
    return RunReconciler(ctx)


def test_a_task_waiting_unchanged_is_claimed_only_when_marked_or_by_the_safety_net(
    db_url: str,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        loop = _loop(db_url, tmp_path)
        db = loop.ctx.db
        o = await seed_owners(db)
        a_while = utcnow() - timedelta(seconds=3 * RESYNC)
        long_ago = utcnow() - timedelta(seconds=(LAZY_RESYNCS + 1) * RESYNC)
        (quiet,) = await add_runs(db, o, 1, run_spec=TASK, dirty=False, last_processed_at=a_while)
        (running,) = await add_runs(db, o, 1, run_spec=TASK, dirty=False, status="running",
                                    last_processed_at=a_while)  # fmt: skip
        (marked,) = await add_runs(db, o, 1, run_spec=TASK, dirty=True, last_processed_at=a_while)
        (old,) = await add_runs(db, o, 1, run_spec=TASK, dirty=False, last_processed_at=long_ago)
        (service,) = await add_runs(db, o, 1, run_spec=SERVICE, dirty=False,
                                    last_processed_at=a_while)  # fmt: skip
        (pending,) = await add_runs(db, o, 1, run_spec=TASK, dirty=False, status="pending",
                                    last_processed_at=a_while)  # fmt: skip
        # A pass that ended without its result (a crash, a rolled-back shared write): the claim
        # had cleared `dirty`, the lapsed lease keeps it on the status's interval.
        lapsed_at = utcnow() - timedelta(seconds=1)
        (lapsed,) = await add_runs(db, o, 1, run_spec=TASK, dirty=False, last_processed_at=a_while,
                                   lock_expires_at=lapsed_at, lock_token="x")  # fmt: skip
        claimed = {rid for rid, _ in await loop.claim()}
        assert claimed == {marked, old, service, pending, lapsed}
        assert quiet not in claimed and running not in claimed
        await loop.mark_due([quiet])  # an agent's poll saw its job move: due at once
        assert {rid for rid, _ in await loop.claim()} == {quiet}
        await db.close()

    asyncio.run(scenario())


def test_a_pass_that_failed_leaves_a_lazy_run_due_on_the_status_interval(
    db_url: str,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        loop = _loop(db_url, tmp_path)
        db = loop.ctx.db
        o = await seed_owners(db)
        (rid,) = await add_runs(db, o, 1, run_spec=TASK, dirty=True)
        ((_, token),) = await loop.claim()
        await loop.release(rid, token)  # as `_run_one` does after an error
        assert await loop.claim() == []  # not at once: a failing pass is not a hot loop
        loop.now = lambda: utcnow() + timedelta(seconds=RESYNC + 0.5)  # type: ignore[method-assign]
        assert [r for r, _ in await loop.claim()] == [rid]
        await db.close()

    asyncio.run(scenario())


def test_the_idle_wait_neither_spins_on_a_lazy_run_nor_oversleeps_a_service(
    db_url: str,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        loop = _loop(db_url, tmp_path)
        db = loop.ctx.db
        o = await seed_owners(db)
        a_while = utcnow() - timedelta(seconds=3 * RESYNC)
        await add_runs(db, o, 1, run_spec=TASK, dirty=False, last_processed_at=a_while)
        # Only a lazy row, resynced a while ago: the wait is the resync period, not a spin.
        assert await loop._idle_wait() == RESYNC
        soon = utcnow() - timedelta(seconds=RESYNC - 0.5)
        await add_runs(db, o, 1, run_spec=SERVICE, dirty=False, last_processed_at=soon)
        assert 0.01 < await loop._idle_wait() <= 0.5  # the service's own interval
        await db.close()

    asyncio.run(scenario())


def test_a_service_spec_as_stored_carries_the_mark_the_claim_reads() -> None:
    """The claim tells services by their stored spec's text: as runs/apply writes it, raw and
    normalised (`conf.model_dump`, as an update writes it)."""
    raw = {"type": "service", "port": 8000, "commands": ["python -m http.server"]}
    conf = parse_configuration(raw).model_dump(mode="json")
    for configuration in (raw, conf):
        stored = RunSpec(run_name="s", configuration=configuration).model_dump_json()
        assert _SERVICE_MARK in stored
    task = {"type": "task", "commands": ["echo"]}
    assert _SERVICE_MARK not in RunSpec(run_name="t", configuration=task).model_dump_json()
