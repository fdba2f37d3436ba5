"""The start-up heap moved out of the garbage collector's sight (`gc.freeze`).

A started server holds several hundred thousand objects that live as long as the process
(modules, FastAPI routes, SQLAlchemy tables and compiled statements, pydantic validators).
Every full collection walked them all: ~65 ms with the event loop stopped, every few seconds
under load, and each request in flight waited it out: that was the runs/list p99 (8
connections: ~100 ms against a ~30 ms median). Frozen, they are not walked again; a full
collection looks only at what was allocated since.

Frozen objects are never collected. The first freeze, when the app has started, is not
preceded by a collection (that would delay the first answer by ~0.1 s), so the little cyclic
garbage start-up left behind stays; the second, once the background loops have run their
first passes and the first requests imported what they import lazily, comes right after a
collection. Frozen objects that die later are still freed by their reference counts; only
reference cycles among them would stay, and few start-up objects die at all.
"""

from __future__ import annotations

import asyncio
import gc

# After start-up: long enough for the background loops' first passes (they begin at the first
# answer or 1 s after start-up) and the first requests' lazy imports.
SETTLED_SECONDS = 30.0


def _collect_and_freeze() -> None:
    gc.collect()
    gc.freeze()


def freeze_now_and_later(delay: float = SETTLED_SECONDS) -> None:
    """Called on the running event loop (the server's ready callback)."""
    gc.freeze()
    asyncio.get_running_loop().call_later(delay, _collect_and_freeze)
