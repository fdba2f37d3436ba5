"""Which rows a reconciler's claim takes and when its loop next looks: the due-row conditions
(`dirty`, marked in memory, or stale by their status's interval, with the lazy rows that only a
change moves resynced rarely) and the idle wait they give. A mixin of `base.Reconciler`, kept
apart so the loop's file reads as the loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, case, func, not_, null, or_, select

from dstack.models.wire import utcnow
from dstack.server.services.context import ServerContext

# A row that only a change moves (`lazy`) is still resynced, as a safety net, after this many
# resync periods.
LAZY_RESYNCS = 15
# The expiry `release` leaves: a lapsed lease (see `DueRows._stale`).
LAPSED = datetime(1970, 1, 1, tzinfo=timezone.utc)


class DueRows(ABC):
    ctx: ServerContext
    table: Any  # a tables class with LeaseMixin columns
    active_statuses: tuple[str, ...]

    @abstractmethod
    def interval(self, status: str) -> float:
        """Seconds between passes over a row in `status` (`Reconciler.interval`)."""

    def claim_order(self) -> tuple[Any, ...]:
        """ORDER BY terms for picking due rows: expressions over the row (columns, correlated
        scalar subqueries), optionally `.desc()`. They are evaluated again in RETURNING after
        the lease is stamped, so they must not use the lease columns or `dirty`."""
        return (self.table.last_processed_at,)

    def scope(self) -> Any | None:
        """An extra condition on the rows this loop drives, beyond an active status (None:
        none). Volumes keep their status when deleted, so their loop leaves deleted rows out."""
        return None

    def now(self) -> datetime:
        """The clock of claims and leases (a test replaces it to expire leases at will)."""
        return utcnow()

    def lazy(self) -> Any | None:
        """A condition on the rows that nothing but a change moves: every change that could
        alter their decision marks them due in the same transaction (`dirty`) or in memory
        (`mark_due`), so the status's periodic resync would find nothing to do. They are
        resynced only every `lazy_interval` (a safety net). None: no such rows."""
        return None

    def lazy_interval(self, status: str) -> float:
        return max(self.interval(status), LAZY_RESYNCS * self.ctx.settings.resync_seconds)

    def _stale(self, status: str, now: datetime, lazy: Any | None) -> Any:
        """Rows in `status` due again by the clock (the periodic resync)."""
        tbl = self.table
        stale = tbl.last_processed_at <= now - timedelta(seconds=self.interval(status))
        if lazy is None:
            return stale
        slow = tbl.last_processed_at <= now - timedelta(seconds=self.lazy_interval(status))
        # A lapsed lease (left by a crash, a pass whose shared write was rolled back, or
        # `release` after an error) marks a pass that ended without its result: the claim
        # cleared `dirty`, so the row is due again on the status's interval.
        interrupted = tbl.lock_expires_at.is_not(None)
        return or_(and_(or_(not_(lazy), interrupted), stale), slow)

    def _due(self, now: datetime, nudged: list[str] | None = None) -> Any:
        tbl = self.table
        conds = [tbl.dirty.is_(True)]
        if nudged:
            conds.append(tbl.id.in_(nudged))
        lazy = self.lazy()
        for status in self.active_statuses:
            conds.append(and_(tbl.status == status, self._stale(status, now, lazy)))
        scope = self.scope()
        base = and_(tbl.status.in_(self.active_statuses), or_(*conds), self._free(now))
        return base if scope is None else and_(base, scope)

    def _free(self, now: datetime) -> Any:
        tbl = self.table
        return or_(tbl.lock_expires_at.is_(None), tbl.lock_expires_at < now)

    async def _idle_wait(self) -> float:
        """Sleep until the next row falls due (or the resync period), so a due row is never
        left waiting for a whole extra interval."""
        resync = self.ctx.settings.resync_seconds
        tbl = self.table
        now = self.now()
        scope = self.scope()
        lazy = self.lazy()
        last = tbl.last_processed_at
        # Per status, the oldest row resynced on the status's interval and the oldest lazy one.
        if lazy is None:
            cols = [func.min(last), null()]
        else:
            lazy = and_(lazy, tbl.lock_expires_at.is_(None))  # a lapsed lease: see `_stale`
            cols = [
                func.min(case((lazy, None), else_=last), type_=last.type),
                func.min(case((lazy, last), else_=None), type_=last.type),
            ]
        q = select(tbl.status, *cols).where(tbl.status.in_(self.active_statuses), self._free(now))
        if scope is not None:
            q = q.where(scope)
        async with self.ctx.db.session() as s:
            rows = (await s.execute(q.group_by(tbl.status))).all()
        due = [
            (at + timedelta(seconds=every(status)) - now).total_seconds()
            for status, oldest, oldest_lazy in rows
            for at, every in ((oldest, self.interval), (oldest_lazy, self.lazy_interval))
            if at is not None
        ]
        return max(0.01, min([resync, *due]))
