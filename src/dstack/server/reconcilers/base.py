"""The loop every reconciler shares (DESIGN.md, 'How state moves').

1. Claim: one `UPDATE … RETURNING` stamps a lease (owner, token, expiry) on up to `batch` due
   rows that nobody holds and returns their ids. The rows are picked by a subquery in
   `claim_order()`: on Postgres `FOR UPDATE SKIP LOCKED`, so concurrent claimers on several
   server replicas skip each other's rows instead of queueing on them; on SQLite the statement
   runs under the database's single write lock, so two claims are serialized. A crashed
   claimer's lease simply expires. A loop claims no more rows than it has free workers, so rows
   it could not start yet stay free for another replica.
2. The subclass loads a snapshot, observes (agent/backend reads), calls its pure `decide()`,
   acts outside any transaction, and applies the result in a short transaction guarded by the
   lease token (`guarded_update`): a lost lease updates nothing and the work is discarded.
   While `process()` runs, a heartbeat extends the lease every third of its length, so an act
   longer than the lease (an SSH bootstrap) keeps it; if the heartbeat finds the token gone,
   the pass is lost.
3. Services wake the loop through the hub after a commit; a periodic resync catches the rest.
   Each loop has its own wake flag (`Hub.waiter`), so no wake is lost (services/hub.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ClauseElement

from dstack.server.db.session import db_fault
from dstack.server.reconcilers.due_rows import LAPSED, DueRows
from dstack.server.reconcilers.lease_sql import guarded_statement, null_last, order_terms
from dstack.server.services import log_follow, telemetry
from dstack.server.services.context import ServerContext

log = logging.getLogger(__name__)


# A row marked due in memory stays so this long at most, and one claim looks at this many.
NUDGE_SECONDS = 10.0
NUDGE_BATCH = 500


class LeaseLost(Exception):
    """The row's lease was taken over; whatever this pass computed must be dropped."""


class Requeued(LeaseLost):
    """The pass gave its lease back on purpose, row due again at once (e.g. a placement that
    lost a race retries): its result is dropped, but no lease was lost."""


@dataclass
class _Pass:
    """One `process()` of one claimed row: what its heartbeat and its writes share."""

    row_id: str
    token: str
    # Set when the pass starts giving the lease back (guarded_update, release): from then on a
    # missing token is the pass's own doing, not a loss, and the heartbeat stops.
    finished: bool = False
    lost: bool = False
    # The pass wrote `dirty=True` on its own row: wake the loop once that is committed.
    rewake: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)


# Task-local (each pass runs in its own task): which pass the current code belongs to.
_current_pass: ContextVar[_Pass | None] = ContextVar("reconciler_pass", default=None)


class Reconciler(DueRows, ABC):
    kind: str  # hub channel and lock owner prefix
    table: Any  # a tables class with LeaseMixin columns
    active_statuses: tuple[str, ...]
    workers: int = 8
    batch: int = 16

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.owner = f"{self.kind}:{ctx.instance_id}"
        self._inflight: set[str] = set()
        self._sem = asyncio.Semaphore(self.workers)
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        # Registered now, not when the loop first sleeps: a wake between construction and the
        # first wait is kept.
        self._waiter = ctx.hub.waiter(self.kind)
        # When the loop's idle sleep ends (loop time), while it sleeps; None otherwise.
        self._sleep_deadline: float | None = None
        # While the database answers busy or full: the pause before the next claim.
        self._db_backoff = 0.0
        self.leases_lost = 0  # passes whose lease was taken over (heartbeat or guarded write)
        self._closers: list[Callable[[], Awaitable[None]]] = []
        # Rows marked due in memory (`mark_due`): id -> loop time marked.
        self._nudged: dict[str, float] = {}

    # -- to implement ---------------------------------------------------------------------

    @abstractmethod
    def interval(self, status: str) -> float:
        """Seconds between passes over a row in `status` when nothing wakes it."""

    @abstractmethod
    async def process(self, row_id: str, token: str) -> None:
        """Load, observe, decide, act and apply for one claimed row."""

    # -- claiming (which rows are due: due_rows.py) ----------------------------------------

    async def claim(self, limit: int | None = None) -> list[tuple[str, str]]:
        """Lease up to `limit` (at most `batch`) due rows in one statement; (id, token) pairs in
        claim order."""
        n = self.batch if limit is None else min(limit, self.batch)
        if n <= 0:
            return []
        now = self.now()
        token = str(uuid.uuid4())
        expires = now + timedelta(seconds=self.ctx.settings.lease_seconds)
        tbl = self.table
        order = self.claim_order()
        terms = order_terms(order)
        nudged = self._nudged_ids()
        pick = select(tbl.id).where(self._due(now, nudged)).order_by(*order).limit(n)
        if self._inflight:
            # Our own rows whose lease lapsed while their pass still runs are not claimed twice.
            pick = pick.where(tbl.id.not_in(sorted(self._inflight)))
        stmt = update(tbl).values(
            lock_token=token, lock_owner=self.owner, lock_expires_at=expires, dirty=False
        )
        if self.ctx.db.is_sqlite:
            stmt = stmt.where(tbl.id.in_(pick.scalar_subquery()))
        else:
            # A subquery in FROM with LIMIT is evaluated once; the locks it takes (skipping rows
            # another claimer is locking) are what make concurrent claims disjoint.
            picked = pick.with_for_update(skip_locked=True).subquery("picked")
            stmt = stmt.where(tbl.id == picked.c.id)
        # Re-checked on the row being updated: on Postgres a row claimed and committed by
        # someone else after our snapshot is re-evaluated here and left alone.
        stmt = stmt.where(self._free(now)).returning(
            tbl.id, *(expr.label(f"k{i}") for i, (expr, _) in enumerate(terms))
        )
        async with self.ctx.db.session() as s:
            rows = [tuple(r) for r in (await s.execute(stmt)).all()]
            await s.commit()
        for i in reversed(range(len(terms))):  # stable sorts, last key first
            rows.sort(key=lambda r, i=i: null_last(r[i + 1]), reverse=terms[i][1])
        for r in rows:
            self._nudged.pop(r[0], None)
        return [(r[0], token) for r in rows]

    async def extend(self, row_id: str, token: str) -> bool:
        """Push the lease's expiry one lease length from now, if we still hold it."""
        tbl = self.table
        expires = self.now() + timedelta(seconds=self.ctx.settings.lease_seconds)
        async with self.ctx.db.session() as s:
            res = await s.execute(
                update(tbl)
                .where(tbl.id == row_id, tbl.lock_token == token)
                .values(lock_expires_at=expires)
            )
            await s.commit()
        return bool(res.rowcount == 1)

    def _finishing(self, row_id: str, token: str) -> _Pass | None:
        """Mark the current pass as giving its lease back (if `row_id` is its row)."""
        p = _current_pass.get()
        if p is not None and p.row_id == row_id and p.token == token:
            p.finished = True
            return p
        return None

    def lease_lost(self) -> bool:
        """Within `process()`: the heartbeat found this pass's lease taken over. A long act may
        check it to stop early; its guarded write would be refused anyway."""
        p = _current_pass.get()
        return p is not None and p.lost

    async def release(self, row_id: str, token: str) -> None:
        """Give a lease back without applying anything (e.g. after an error), due again soon:
        the lease is left lapsed (expired long ago: free to every claimer whatever its clock),
        which keeps even a `lazy` row on its status's interval."""
        self._finishing(row_id, token)
        now = self.now()
        async with self.ctx.db.session() as s:
            await s.execute(
                update(self.table)
                .where(self.table.id == row_id, self.table.lock_token == token)
                .values(
                    lock_token=None,
                    lock_owner=None,
                    lock_expires_at=LAPSED,
                    last_processed_at=now,
                )
            )
            await s.commit()

    async def release_in(
        self, s: AsyncSession, row_id: str, token: str, *, dirty: bool = False
    ) -> None:
        """`release` inside the caller's session (which the caller commits): a pass that already
        wrote in `s` must not open a second session (on SQLite it would wait on its own write
        lock)."""
        p = self._finishing(row_id, token)
        if dirty and p is not None:
            p.rewake = True  # due again at once: wake the loop when the row is out of flight
        values: dict[str, Any] = {
            "lock_token": None,
            "lock_owner": None,
            "lock_expires_at": None,
            "last_processed_at": self.now(),
        }
        if dirty:
            values["dirty"] = True
        await s.execute(
            update(self.table)
            .where(self.table.id == row_id, self.table.lock_token == token)
            .values(**values)
        )

    async def guarded_update(
        self,
        s: AsyncSession,
        row_id: str,
        token: str,
        values: dict[str, Any],
        now: datetime,
        *,
        due_in: tuple[str, float] | None = None,
        keep_lease: bool = False,
    ) -> None:
        """Apply `values` and drop the lease, only if we still hold it. `due_in` (status,
        seconds): the decision says when to look again, sooner than the status's interval.
        `keep_lease`: the pass goes on to the row's next step at once (its own later
        `guarded_update` drops the lease); a crash in between leaves the lease to expire.

        The row's object, where the session holds it, keeps the values it was read with
        (`synchronize_session=False`): SQLAlchemy's evaluation of the UPDATE against the
        session's objects was the largest single cost of a pass, and the callers want the
        values from before the write anyway (the "X -> Y" of their events; jobs, fleets,
        instances and volumes hold the row from an earlier, closed session; the run worker
        reads only its run's unchanged identity columns afterwards)."""
        p = None if keep_lease else self._finishing(row_id, token)
        tbl = self.table
        processed = now
        if due_in is not None:
            early = max(0.0, self.interval(due_in[0]) - due_in[1])
            processed = now - timedelta(seconds=early)
        if any(isinstance(v, ClauseElement) for v in values.values()):
            stmt = guarded_statement(tbl, tuple(values), literal=values, keep_lease=keep_lease)
            params = {"g_id": row_id, "g_token": token, "g_processed": processed}
        else:
            stmt = guarded_statement(tbl, tuple(sorted(values)), keep_lease=keep_lease)
            params = {f"v_{k}": v for k, v in values.items()}
            params.update(g_id=row_id, g_token=token, g_processed=processed)
        row = (await s.execute(stmt, params)).first()
        if row is None:
            raise LeaseLost(f"{self.kind} {row_id}")
        if row[0] and p is not None:
            # The row's next step is due now (this pass said so, or someone marked it while we
            # held it, and their wake found it leased), but the loop may already be asleep: wake
            # it once this transaction commits.
            p.rewake = True

    async def load_row(self, s: AsyncSession, row_id: str, token: str) -> Any | None:
        row = await s.get(self.table, row_id, populate_existing=True)
        if row is None or row.lock_token != token:
            return None
        return row

    # -- the loop -------------------------------------------------------------------------

    async def _heartbeat(self, p: _Pass) -> None:
        """Keep the lease of a running pass: extend it every third of its length until the
        pass ends or starts giving the lease back. A failed extension is retried on the next
        beat (the lease still has two thirds to run); a missing token means someone took the
        row over: the pass is lost, and its guarded write will be refused."""
        period = self.ctx.settings.lease_seconds / 3
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(p.stop.wait(), period)
            if p.stop.is_set() or p.finished:
                return
            try:
                held = await self.extend(p.row_id, p.token)
            except Exception:
                log.warning("%s %s: extending the lease failed", self.kind, p.row_id, exc_info=True)
                continue
            if not held and not p.finished:
                p.lost = True
                log.warning("%s %s: lease taken over during the pass", self.kind, p.row_id)
                return

    async def _run_one(self, row_id: str, token: str) -> None:
        p = _Pass(row_id, token)
        _current_pass.set(p)  # this task's context only
        beat = asyncio.create_task(self._heartbeat(p))
        started = time.monotonic()
        try:
            async with self._sem:
                await self.process(row_id, token)
            if p.lost:
                log.debug("%s %s: lease lost, result discarded", self.kind, row_id)
        except Requeued as e:
            log.debug("%s %s: requeued: %s", self.kind, row_id, e)
        except LeaseLost:
            p.lost = True
            log.debug("%s %s: lease lost, result discarded", self.kind, row_id)
        except Exception as e:
            if db_fault(e):
                # Busy or full: the database's state, not a bug; one line, and the row is retried.
                log.warning("%s %s: database %s; will retry", self.kind, row_id, db_fault(e))
            else:
                log.exception("%s %s: processing failed; will retry", self.kind, row_id)
            try:
                await self.release(row_id, token)
            except Exception as released:
                if db_fault(released):
                    # Still busy or full: the lease lapses on its own and the row is retried.
                    log.warning(
                        "%s %s: database %s; release left to the lease's expiry",
                        self.kind, row_id, db_fault(released),
                    )  # fmt: skip
                else:
                    log.exception("%s %s: release failed", self.kind, row_id)
        finally:
            p.stop.set()
            await asyncio.gather(beat, return_exceptions=True)
            if p.lost:
                self.leases_lost += 1
            telemetry.reconciler_pass(self.kind, time.monotonic() - started, p.lost)
            self._inflight.discard(row_id)
            self._slot_freed.set()
            # Log followers waiting on this process look again (new records, a run's end).
            self.ctx.hub.wake_local(log_follow.WAKE)
            if (p.rewake or row_id in self._nudged) and not p.lost:
                # Only now: a claim skips rows still in flight, so a wake sent while this row
                # was in `_inflight` would find nothing to claim and the row would wait for
                # its interval. Local: the row is due to any replica's claim anyway, and
                # this is the hot path (no NOTIFY per pass).
                self.ctx.hub.wake_local(self.kind)
            else:
                self._rearm()

    def _rearm(self) -> None:
        """A pass ended. While it ran, its row was leased and so left out of the idle wait's
        reckoning; it falls due again within its status's interval. If the loop sleeps past
        that (the resync period), wake it to reckon again: a running job is watched every
        `running_job_poll_seconds`, not every resync."""
        deadline = self._sleep_deadline
        if deadline is None:
            return
        soonest = min(self.interval(s) for s in self.active_statuses)
        if deadline > asyncio.get_running_loop().time() + soonest:
            self._waiter.set()

    def start(self, claimed: list[tuple[str, str]]) -> None:
        """Run a pass for each claimed row, each in its own task."""
        for row_id, token in claimed:
            self._inflight.add(row_id)
            task = asyncio.create_task(self._run_one(row_id, token))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Have `closer` run when the loop ends (the server stopping cancels it): what the
        loop holds beyond its passes, e.g. long polls to agents."""
        self._closers.append(closer)

    async def mark_due(self, row_ids: list[str]) -> None:
        """Rows an observer in this process saw change (an agent's long poll): due now, to
        this loop. Kept in memory, not written as `dirty`: a write per change would queue on
        the database's write lock with every pass; the observer and the claim are both here,
        and should this process die, the poll still finds the rows."""
        now = asyncio.get_running_loop().time()
        for row_id in row_ids:
            self._nudged[row_id] = now
        self._waiter.set()

    def _nudged_ids(self) -> list[str]:
        """The rows marked due lately (older marks are dropped: the poll has seen them)."""
        horizon = asyncio.get_running_loop().time() - NUDGE_SECONDS
        for row_id in [r for r, at in self._nudged.items() if at < horizon]:
            del self._nudged[row_id]
        return sorted(self._nudged)[:NUDGE_BATCH]

    async def run_forever(self) -> None:
        try:
            await self._loop()
        finally:
            for closer in self._closers:
                with contextlib.suppress(Exception):
                    await asyncio.shield(closer())

    async def _loop(self) -> None:
        while True:
            self._slot_freed.clear()
            free = self.workers - len(self._inflight)
            if free <= 0:
                # Every worker is busy: claim nothing (another replica may take the rows) until
                # a pass ends. Wakes meanwhile stay in our flag.
                await self._slot_freed.wait()
                continue
            try:
                claimed = await self.claim(free)
                self._db_backoff = 0.0
            except Exception as e:
                claimed = []
                if not db_fault(e):
                    log.exception("%s: claim failed", self.kind)
                else:
                    # Back off while the database is busy or full (doubling, at most 30 s):
                    # nothing is lost, every row is still due when it answers again.
                    self._db_backoff = min(30.0, max(0.5, self._db_backoff * 2))
                    log.warning(
                        "%s: database %s; next claim in %.1fs",
                        self.kind,
                        db_fault(e),
                        self._db_backoff,
                    )
                    await asyncio.sleep(self._db_backoff)
            self.start(claimed)
            if claimed:
                await asyncio.sleep(0)
                continue
            try:
                wait = await self._idle_wait()
            except Exception:
                log.exception("%s: computing the next due time failed", self.kind)
                wait = self.ctx.settings.resync_seconds
            self._sleep_deadline = asyncio.get_running_loop().time() + wait
            try:
                await self._waiter.wait(wait)
            finally:
                self._sleep_deadline = None

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
