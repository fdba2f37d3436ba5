"""The loop every reconciler shares (DESIGN.md, 'How state moves').

1. Claim: a conditional UPDATE stamps a lease (owner, token, expiry) on due rows that nobody
   holds; on Postgres `FOR UPDATE SKIP LOCKED` only makes the pick cheaper. A crashed claimer's
   lease simply expires.
2. The subclass loads a snapshot, observes (agent/backend reads), calls its pure `decide()`,
   acts outside any transaction, and applies the result in a short transaction guarded by the
   lease token (`guarded_update`): a lost lease updates nothing and the work is discarded.
3. Services wake the loop through the hub after a commit; a periodic resync catches the rest.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from abc import ABC, abstractmethod
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.wire import utcnow
from dstack.server.services.context import ServerContext

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The row's lease was taken over; whatever this pass computed must be dropped."""


class Reconciler(ABC):
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
        self._rewake = False

    # -- to implement ---------------------------------------------------------------------

    @abstractmethod
    def interval(self, status: str) -> float:
        """Seconds between passes over a row in `status` when nothing wakes it."""

    @abstractmethod
    async def process(self, row_id: str, token: str) -> None:
        """Load, observe, decide, act and apply for one claimed row."""

    # -- claiming -------------------------------------------------------------------------

    def claim_order(self) -> tuple[Any, ...]:
        return (self.table.last_processed_at,)

    def _due(self, now: datetime) -> Any:
        tbl = self.table
        conds = [tbl.dirty.is_(True)]
        for status in self.active_statuses:
            conds.append(
                and_(
                    tbl.status == status,
                    tbl.last_processed_at <= now - timedelta(seconds=self.interval(status)),
                )
            )
        return and_(
            tbl.status.in_(self.active_statuses),
            or_(*conds),
            or_(tbl.lock_expires_at.is_(None), tbl.lock_expires_at < now),
        )

    async def claim(self) -> list[tuple[str, str]]:
        now = utcnow()
        token = str(uuid.uuid4())
        expires = now + timedelta(seconds=self.ctx.settings.lease_seconds)
        tbl = self.table
        async with self.ctx.db.session() as s:
            q = select(tbl.id).where(self._due(now)).order_by(*self.claim_order())
            if not self.ctx.db.is_sqlite:
                q = q.with_for_update(skip_locked=True)
            rows = (await s.execute(q.limit(self.batch))).scalars()
            ids = [i for i in rows if i not in self._inflight]
            claimed = []
            for row_id in ids:
                res = await s.execute(
                    update(tbl)
                    .where(tbl.id == row_id)
                    .where(or_(tbl.lock_expires_at.is_(None), tbl.lock_expires_at < now))
                    .values(
                        lock_token=token,
                        lock_owner=self.owner,
                        lock_expires_at=expires,
                        dirty=False,
                    )
                )
                if res.rowcount == 1:
                    claimed.append((row_id, token))
            await s.commit()
        return claimed

    async def release(self, row_id: str, token: str) -> None:
        """Give a lease back without applying anything (e.g. after an error), due again soon."""
        async with self.ctx.db.session() as s:
            await s.execute(
                update(self.table)
                .where(self.table.id == row_id, self.table.lock_token == token)
                .values(
                    lock_token=None,
                    lock_owner=None,
                    lock_expires_at=None,
                    last_processed_at=utcnow(),
                )
            )
            await s.commit()

    async def guarded_update(
        self, s: AsyncSession, row_id: str, token: str, values: dict[str, Any], now: datetime
    ) -> None:
        """Apply `values` and drop the lease, only if we still hold it."""
        tbl = self.table
        res = await s.execute(
            update(tbl)
            .where(tbl.id == row_id, tbl.lock_token == token)
            .values(
                **values,
                version=tbl.version + 1,
                lock_token=None,
                lock_owner=None,
                lock_expires_at=None,
                last_processed_at=now,
            )
        )
        if res.rowcount != 1:
            raise LeaseLost(f"{self.kind} {row_id}")
        if values.get("dirty"):
            # The row's next step is due now, but the loop may already be asleep: wake it once
            # this transaction commits (a wake before the commit would find the row leased).
            self._rewake = True

    async def load_row(self, s: AsyncSession, row_id: str, token: str) -> Any | None:
        row = await s.get(self.table, row_id, populate_existing=True)
        if row is None or row.lock_token != token:
            return None
        return row

    # -- the loop -------------------------------------------------------------------------

    async def _run_one(self, row_id: str, token: str) -> None:
        try:
            async with self._sem:
                await self.process(row_id, token)
            if self._rewake:
                self._rewake = False
                self.ctx.hub.wake(self.kind)
        except LeaseLost:
            log.debug("%s %s: lease lost, result discarded", self.kind, row_id)
        except Exception:
            log.exception("%s %s: processing failed; will retry", self.kind, row_id)
            try:
                await self.release(row_id, token)
            except Exception:
                log.exception("%s %s: release failed", self.kind, row_id)
        finally:
            self._inflight.discard(row_id)

    async def run_forever(self) -> None:
        hub = self.ctx.hub
        while True:
            try:
                claimed = await self.claim()
            except Exception:
                log.exception("%s: claim failed", self.kind)
                claimed = []
            for row_id, token in claimed:
                self._inflight.add(row_id)
                task = asyncio.create_task(self._run_one(row_id, token))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if not claimed:
                try:
                    wait = await self._idle_wait()
                except Exception:
                    log.exception("%s: computing the next due time failed", self.kind)
                    wait = self.ctx.settings.resync_seconds
                await hub.wait(self.kind, wait)
            else:
                await asyncio.sleep(0)

    async def _idle_wait(self) -> float:
        """Sleep until the next row falls due (or the resync period), so a due row is never
        left waiting for a whole extra interval."""
        resync = self.ctx.settings.resync_seconds
        tbl = self.table
        now = utcnow()
        async with self.ctx.db.session() as s:
            rows = await s.execute(
                select(tbl.status, func.min(tbl.last_processed_at))
                .where(
                    tbl.status.in_(self.active_statuses),
                    or_(tbl.lock_expires_at.is_(None), tbl.lock_expires_at < now),
                )
                .group_by(tbl.status)
            )
            due = [
                (last + timedelta(seconds=self.interval(status)) - now).total_seconds()
                for status, last in rows.all()
                if last is not None
            ]
        return max(0.01, min([resync, *due]))

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
