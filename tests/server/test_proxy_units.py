"""Pure parts of the service proxy: rate-limit buckets, rule choice (readiness: test_readiness)."""

from __future__ import annotations

from dstack.server.proxy.ratelimit import RateLimiter


def test_token_bucket_allows_one_plus_burst_then_refills_at_rps():
    rl = RateLimiter()
    rule = {"prefix": "/", "rps": 2.0, "burst": 1}
    assert [rl.allow("r", rule, "k", now=0.0) for _ in range(3)] == [True, True, False]
    assert rl.allow("r", rule, "k", now=0.5)  # 0.5 s at 2 rps = one token
    assert not rl.allow("r", rule, "k", now=0.5)
    assert rl.allow("r", rule, "other", now=0.5)  # each key has its own bucket


def test_longest_prefix_wins_and_keys():
    rules = [{"prefix": "/", "rps": 1}, {"prefix": "/api", "rps": 5}]
    assert RateLimiter.rule_for(rules, "/api/x")["rps"] == 5
    assert RateLimiter.rule_for(rules, "/other")["rps"] == 1
    assert RateLimiter.rule_for([{"prefix": "/api", "rps": 1}], "/x") is None
    header = {"key": {"type": "header", "header": "X-Key"}}
    assert RateLimiter.key_of(header, "1.2.3.4", {"x-key": "abc"}) == "h:abc"
    assert RateLimiter.key_of({}, "1.2.3.4", {}) == "ip:1.2.3.4"

