"""server/heap.py: the start-up heap is frozen at once, and what was allocated by the time the
server has settled is frozen after a collection (garbage is not frozen with it)."""

from __future__ import annotations

import asyncio
import gc
import weakref

from dstack.server import heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only a collection frees it


def test_freezes_now_and_again_after_collecting() -> None:
    async def scenario() -> None:
        heap.freeze_now_and_later(delay=0.05)
        assert gc.get_freeze_count() > 0
        kept = [Node() for _ in range(10)]
        dropped = [weakref.ref(Node()) for _ in range(10)]
        tracked = {id(o) for o in gc.get_objects() if type(o) is Node}
        assert {id(n) for n in kept} <= tracked
        await asyncio.sleep(0.3)
        # The garbage was collected before the second freeze; the live nodes were frozen
        # (out of the generations a collection walks).
        assert all(ref() is None for ref in dropped)
        tracked = {id(o) for o in gc.get_objects() if type(o) is Node}
        assert not tracked & {id(n) for n in kept}

    gc.unfreeze()
    try:
        asyncio.run(scenario())
    finally:
        gc.unfreeze()
