"""In-process wake-ups for reconcilers.

A service that changes state calls `hub.wake("jobs")` after its commit, so the reconciler acts
now instead of at its next resync. Nothing depends on a wake arriving: every loop also resyncs
periodically (DESIGN.md, 'How state moves').
"""

from __future__ import annotations

import asyncio
import contextlib


class Hub:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, kind: str) -> asyncio.Event:
        ev = self._events.get(kind)
        if ev is None:
            ev = self._events[kind] = asyncio.Event()
        return ev

    def wake(self, *kinds: str) -> None:
        for kind in kinds:
            self.event(kind).set()

    async def wait(self, kind: str, timeout: float) -> None:
        ev = self.event(kind)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)
        ev.clear()
