"""In-process wake-ups for reconcilers.

A service that changes state calls `hub.wake("jobs")` after its commit, so the reconciler acts
now instead of at its next resync. Nothing depends on a wake arriving: every loop also resyncs
periodically (DESIGN.md, 'How state moves').

Each waiting loop has its own flag (`Waiter`), registered before its first claim. A wake sets
the flag of every waiter of that kind; a waiter clears only its own flag, when it wakes, before
it claims again. So a wake that arrives while a loop is claiming (or busy elsewhere) is kept
for that loop's next wait, and one loop waking never consumes another loop's wake. (A single
shared `asyncio.Event` cleared by whoever woke lost both.)
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable


class Waiter:
    """One loop's wake flag for one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._flag = asyncio.Event()

    @property
    def woken(self) -> bool:
        return self._flag.is_set()

    def set(self) -> None:
        self._flag.set()

    async def wait(self, timeout: float) -> bool:
        """Return at once if a wake arrived since the last return, else sleep until one does
        or `timeout` passes. True when woken. The flag is cleared on return, so the caller's
        next claim sees everything committed before any wake it consumed."""
        if not self._flag.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._flag.wait(), timeout)
        woken = self._flag.is_set()
        self._flag.clear()
        return woken


class Hub:
    def __init__(self) -> None:
        # Weak: a loop that is gone (a test's reconciler, a stopped server) stops being woken.
        self._waiters: dict[str, weakref.WeakSet[Waiter]] = {}
        # Other server replicas' loops (on Postgres: db/notify.py's NOTIFY); None: this
        # process is alone (SQLite) or nothing is wired.
        self.forward: Callable[[str], None] | None = None

    def waiter(self, kind: str) -> Waiter:
        """Register a new waiter for `kind`; wakes from now on set its flag."""
        w = Waiter(kind)
        self._waiters.setdefault(kind, weakref.WeakSet()).add(w)
        return w

    def wake(self, *kinds: str) -> None:
        """Wake this process's loops of each kind and, through `forward`, every replica's."""
        self.wake_local(*kinds)
        if self.forward is not None:
            for kind in kinds:
                self.forward(kind)

    def wake_local(self, *kinds: str) -> None:
        """Wake this process's loops only (a wake received from another replica, or a loop
        re-arming itself for a row it just released)."""
        for kind in kinds:
            for w in list(self._waiters.get(kind, ())):
                w.set()
