"""Request counts for autoscaling, kept in the database so every server replica agrees.

The proxy counts in memory and flushes once a second into `service_stats`: one row per
(run, 5-second bucket, writer), so server replicas never contend for a row. The run
reconciler sums the buckets of its window (`services/service_stats.py`). A request held for a
scaled-to-zero service also counts in `waiting`, which asks the autoscaler for a replica at
once.
"""

from __future__ import annotations

import time
from collections import defaultdict

from sqlalchemy import delete, insert, update

from dstack.server.db import tables as t
from dstack.server.db.session import Database

BUCKET = 5
KEEP_SECONDS = 900


def bucket_of(ts: float) -> int:
    return int(ts) // BUCKET * BUCKET


class StatsRecorder:
    def __init__(self, db: Database, writer: str) -> None:
        self.db = db
        self.writer = writer
        self._counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
        self._last_cleanup = 0.0

    def hit(self, run_id: str) -> None:
        self._counts[(run_id, bucket_of(time.time()))][0] += 1

    def waiting(self, run_id: str) -> None:
        self._counts[(run_id, bucket_of(time.time()))][1] += 1

    def pending(self) -> bool:
        return bool(self._counts)

    async def flush(self) -> list[str]:
        """Write the counts; returns the runs that had held requests (to wake the scaler)."""
        if not self._counts:
            return []
        counts, self._counts = self._counts, defaultdict(lambda: [0, 0])
        woke = sorted({run_id for (run_id, _), (_, w) in counts.items() if w})
        async with self.db.session() as s:
            for (run_id, bucket), (req, wait) in counts.items():
                res = await s.execute(
                    update(t.ServiceStat)
                    .where(
                        t.ServiceStat.run_id == run_id,
                        t.ServiceStat.bucket == bucket,
                        t.ServiceStat.writer == self.writer,
                    )
                    .values(
                        requests=t.ServiceStat.requests + req,
                        waiting=t.ServiceStat.waiting + wait,
                    )
                )
                if res.rowcount == 0:
                    await s.execute(
                        insert(t.ServiceStat).values(
                            run_id=run_id,
                            bucket=bucket,
                            writer=self.writer,
                            requests=req,
                            waiting=wait,
                        )
                    )
            if woke:
                await s.execute(update(t.Run).where(t.Run.id.in_(woke)).values(dirty=True))
            now = time.time()
            if now - self._last_cleanup > 60:
                self._last_cleanup = now
                await s.execute(
                    delete(t.ServiceStat).where(
                        t.ServiceStat.bucket < bucket_of(now - KEEP_SECONDS)
                    )
                )
            await s.commit()
        return woke
