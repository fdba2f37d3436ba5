"""The proxy's cache: one load per key however many requests ask at once; a value just past
its ttl is served while it reloads; an older one, or a forgotten one, is waited for."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from dstack.server.proxy.cache import AsyncCache


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run the async test body on a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Loader:
    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def __call__(self, key: str) -> str:
        self.calls += 1
        n = self.calls
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("database gone")
        return f"{key}-v{n}"


@sync
async def test_concurrent_misses_share_one_load(clock: Clock) -> None:
    load = Loader()
    load.gate.clear()
    cache: AsyncCache[str, str] = AsyncCache(load, ttl=1.0, max_stale=5.0, clock=clock.monotonic)
    waiters = [asyncio.create_task(cache.get("svc")) for _ in range(16)]
    await asyncio.sleep(0)
    load.gate.set()
    assert await asyncio.gather(*waiters) == ["svc-v1"] * 16
    assert load.calls == 1


@sync
async def test_fresh_then_stale_while_reloading_then_too_stale(clock: Clock) -> None:
    load = Loader()
    cache: AsyncCache[str, str] = AsyncCache(load, ttl=1.0, max_stale=5.0, clock=clock.monotonic)
    assert await cache.get("svc") == "svc-v1"
    clock.now += 0.5
    assert await cache.get("svc") == "svc-v1" and load.calls == 1  # fresh: no load
    clock.now += 1.0
    load.gate.clear()
    assert await cache.get("svc") == "svc-v1"  # stale: answered at once...
    await asyncio.sleep(0)
    assert await cache.get("svc") == "svc-v1" and load.calls == 2  # ...one reload running
    load.gate.set()
    await asyncio.sleep(0.01)
    assert await cache.get("svc") == "svc-v2"
    clock.now += 10.0  # past max_stale: waited for
    load.gate.clear()
    pending = asyncio.create_task(cache.get("svc"))
    await asyncio.sleep(0.01)
    assert not pending.done()
    load.gate.set()
    assert await pending == "svc-v3"


@sync
async def test_forget_and_fresh_load_now(clock: Clock) -> None:
    load = Loader()
    cache: AsyncCache[str, str] = AsyncCache(load, ttl=1.0, max_stale=5.0, clock=clock.monotonic)
    await cache.get("svc")
    cache.forget("svc")
    assert await cache.get("svc") == "svc-v2"
    assert await cache.get("svc", fresh=True) == "svc-v3"


@sync
async def test_failures(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    load = Loader()
    cache: AsyncCache[str, str] = AsyncCache(load, ttl=1.0, max_stale=5.0, clock=clock.monotonic)
    await cache.get("svc")
    load.fail = True
    clock.now += 2.0
    assert await cache.get("svc") == "svc-v1"  # a failed refresh keeps the old value
    await asyncio.sleep(0.01)
    assert "refreshing the proxy's cache failed: database gone" in caplog.text
    clock.now += 10.0
    with pytest.raises(RuntimeError):  # nothing usable: the caller sees the error
        await cache.get("svc")
    load.fail = False
    assert await cache.get("svc") == "svc-v4"
