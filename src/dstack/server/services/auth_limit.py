"""Failed authentication, limited per client address: guessing tokens costs a wait. Only
failures count (a busy client with a valid token is never slowed), and the window slides, so an
address is free again `window` seconds after its failures stop."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

MAX_FAILURES = 10
WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 10_000  # memory bound: the oldest address is forgotten first


class AuthLimiter:
    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float]:
        now = self.clock()
        q = self._failures.get(address)
        if q is None:
            return deque()
        while q and now - q[0] >= self.window:
            q.popleft()
        if not q:
            del self._failures[address]
        return q

    def blocked_for(self, address: str) -> int:
        """Seconds until this address may try again (0: it may now)."""
        q = self._recent(address)
        if len(q) < self.max_failures:
            return 0
        return max(1, math.ceil(self.window - (self.clock() - q[0])))

    def failed(self, address: str) -> None:
        if address not in self._failures and len(self._failures) >= MAX_ADDRESSES:
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(address, deque()).append(self.clock())
