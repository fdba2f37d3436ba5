"""Wakes between server replicas on Postgres: `NOTIFY` after a local wake, `LISTEN` for the
others' (docs/replicas.md).

A run applied on replica A sets `dirty` and wakes A's loops; whichever replica claims the row
first does the work. Without this, replicas B and C found the row only at their next resync.
Each wake kind is sent as `<sender>:<kind>` on one channel; a replica ignores its own. Wakes
are coalesced (a burst of `wake("jobs")` is one notification) and never required for
correctness: a lost one (the connection dropped) is caught by the resync, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

CHANNEL = "dstack_wake"
# How often an idle connection is checked, so a dropped one is reopened (and LISTEN renewed).
PING_SECONDS = 5.0
RECONNECT_SECONDS = 1.0


class PgWakes:
    def __init__(self, engine: AsyncEngine, sender: str, deliver: Callable[[str], None]) -> None:
        self.engine = engine
        self.sender = sender
        self.deliver = deliver  # wakes this process's loops of a kind (Hub.wake_local)
        self._pending: set[str] = set()
        self._flag = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()  # LISTEN is in place (tests wait on it)
        self.received = 0

    def send(self, kind: str) -> None:
        """Queue a wake of `kind` for the other replicas (called after a local commit)."""
        self._pending.add(kind)
        self._flag.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-wakes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        sender, _, kind = payload.partition(":")
        if sender != self.sender and kind:
            self.received += 1
            self.deliver(kind)

    async def _run(self) -> None:
        while True:
            try:
                async with self.engine.connect() as conn:
                    raw = (await conn.get_raw_connection()).driver_connection
                    await raw.add_listener(CHANNEL, self._on_notify)
                    self.connected.set()
                    await self._pump(raw)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - reconnect; the resync covers the gap
                log.warning("wake channel lost; reconnecting", exc_info=True)
            self.connected.clear()
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _pump(self, raw: Any) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._flag.wait(), PING_SECONDS)
            self._flag.clear()
            kinds, self._pending = sorted(self._pending), set()
            if not kinds:
                await raw.execute("SELECT 1")  # a dropped connection shows here
            for kind in kinds:
                await raw.execute(f"SELECT pg_notify('{CHANNEL}', $1)", f"{self.sender}:{kind}")
