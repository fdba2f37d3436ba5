"""A small async cache for the proxy's hot path: one load per key at a time, and a value just
past its `ttl` served while a background load refreshes it.

Without this, every concurrent request that found an entry expired ran its own database load
(16 connections meant 16 identical loads each second), and each of them waited for it: under
load that was a third of the proxy's CPU. With it, the database is read once per key per `ttl`
and no request waits for it unless the entry is missing or older than `max_stale`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class AsyncCache(Generic[K, V]):
    def __init__(
        self,
        load: Callable[[K], Awaitable[V]],
        ttl: float,
        max_stale: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._clock = clock
        self.ttl = ttl
        self.max_stale = max(max_stale, ttl)
        self._values: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, fresh: bool = False) -> V:
        hit = self._values.get(key)
        if hit is not None and not fresh:
            age = self._clock() - hit[0]
            if age < self.ttl:
                return hit[1]
            if age < self.max_stale:
                self._start(key).add_done_callback(_log_failure)
                return hit[1]
        return await asyncio.shield(self._start(key))

    def forget(self, key: K) -> None:
        """The next `get` loads (the value is known to be wrong, not just old)."""
        self._values.pop(key, None)

    def forget_all(self) -> None:
        self._values.clear()

    def _start(self, key: K) -> asyncio.Task[V]:
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._reload(key))
            self._loading[key] = task
        return task

    async def _reload(self, key: K) -> V:
        try:
            started = self._clock()
            value = await self._load(key)
            self._values[key] = (started, value)
            return value
        finally:
            self._loading.pop(key, None)


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("refreshing the proxy's cache failed: %s", task.exception())
