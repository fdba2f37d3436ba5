"""Per-service rate limits: a token bucket per (rule, client key), longest prefix wins.

Limits are kept by each server process (as nginx keeps them per gateway): with several server
replicas behind a balancer the effective limit is per replica.
"""

from __future__ import annotations

import time
from typing import Any


class RateLimiter:
    def __init__(self, max_keys: int = 100_000) -> None:
        self._buckets: dict[tuple[str, str, str], tuple[float, float]] = {}
        self.max_keys = max_keys

    @staticmethod
    def rule_for(rules: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
        best = None
        for rule in rules:
            prefix = rule.get("prefix") or "/"
            if path.startswith(prefix) and (best is None or len(prefix) > len(best["prefix"])):
                best = {**rule, "prefix": prefix}
        return best

    @staticmethod
    def key_of(rule: dict[str, Any], client_ip: str, headers: dict[str, str]) -> str:
        key = rule.get("key") or {}
        if key.get("type") == "header":
            return "h:" + headers.get(str(key.get("header", "")).lower(), "")
        return "ip:" + client_ip

    def allow(self, run_id: str, rule: dict[str, Any], key: str, now: float | None = None) -> bool:
        """Take one token; False means answer 429. Capacity is 1 + burst, refilled at rps."""
        now = time.monotonic() if now is None else now
        rate = float(rule["rps"])
        capacity = 1.0 + int(rule.get("burst") or 0)
        bkey = (run_id, rule["prefix"], key)
        tokens, at = self._buckets.get(bkey, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[bkey] = (tokens, now)
            return False
        if len(self._buckets) >= self.max_keys and bkey not in self._buckets:
            self._buckets.clear()  # bounded memory; a reset only forgives, never refuses
        self._buckets[bkey] = (tokens - 1.0, now)
        return True
