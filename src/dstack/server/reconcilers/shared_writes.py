"""One transaction for the writes of the passes that finish together.

A claim starts up to a batch of passes at once, and passes that only write their own row
(a no-capacity job, a running job's poll) reach their write in the same event-loop turn. Each
used to open its own session and commit: on SQLite a session and a commit are several hops to
the database thread, which is most of what such a pass costs. Here the writes asked for in one
turn run one after another in one session with one commit.

Each write still runs in its own pass's context (a task created with a copy of the pass's
context), so the lease bookkeeping of `Reconciler.guarded_update` sees its own pass. A write
that raises one of the `isolated` exceptions (a lost lease: raised before it wrote anything)
fails alone; any other error rolls the whole transaction back and fails every write in it, and
each pass then releases its row as it would after its own failed commit.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dstack.server.db.session import Database

Write = Callable[[Any], Awaitable[None]]
# Reads for every write of a turn at once, before the first: (session, the writes' keys).
Prefetch = Callable[[Any, list[str]], Awaitable[None]]


@dataclass
class _Member:
    key: str
    write: Write
    context: contextvars.Context
    done: asyncio.Future[None]


class SharedWrites:
    def __init__(
        self,
        db: Database,
        isolated: tuple[type[BaseException], ...],
        prefetch: Prefetch | None = None,
    ) -> None:
        """`prefetch`: loads what the turn's writes read, in their session, in a few queries
        (it leaves them in `session.info`)."""
        self.db = db
        self.isolated = isolated
        self.prefetch = prefetch
        self._members: list[_Member] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, write: Write, key: str = "") -> None:
        """Run `write(session)` in the transaction shared by this turn's writes; returns once
        it is committed (raises what the write raised, or why the commit failed). `key`:
        what `prefetch` loads for it (its row id)."""
        loop = asyncio.get_running_loop()
        if self._members is None:
            self._members = []
            loop.call_soon(self._start)  # after the passes of this turn have asked
        member = _Member(key, write, contextvars.copy_context(), loop.create_future())
        self._members.append(member)
        await member.done

    def _start(self) -> None:
        members, self._members = self._members or [], None
        task = asyncio.create_task(self._commit(members))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commit(self, members: list[_Member]) -> None:
        alone: dict[int, BaseException] = {}
        try:
            async with self.db.session() as s:
                if self.prefetch is not None:
                    await self.prefetch(s, [m.key for m in members])
                for i, m in enumerate(members):
                    try:
                        await asyncio.create_task(m.write(s), context=m.context)
                    except self.isolated as e:
                        alone[i] = e
                await s.commit()
        except BaseException as e:
            for m in members:
                if not m.done.done():
                    m.done.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        for i, m in enumerate(members):
            if m.done.done():
                continue
            if i in alone:
                m.done.set_exception(alone[i])
            else:
                m.done.set_result(None)
