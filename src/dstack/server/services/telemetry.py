"""The server's own instruments for Prometheus (docs/metrics.md): what happens in this
process and is not in the database. Proxy requests (counted by the proxy through the
callback `app.py` gives it) and reconciler passes (timed by `reconcilers/base.py`).

One registry of our own, not prometheus_client's global one: tests build many apps in one
process, and the exposition must not carry the client library's process/platform metrics
twice or collide with another library's names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

PROXY_REQUESTS = Counter(
    "dstack_proxy_requests",
    "Requests to services through the proxy, by service and outcome: `forwarded` (a replica "
    "answered) or the proxy's own error status (404, 429, 502, 503, 504, ...)",
    ["project_name", "run_name", "outcome"],
    registry=REGISTRY,
)
PROXY_LATENCY = Histogram(
    "dstack_proxy_request_duration_seconds",
    "Time the service proxy took to answer a request, by service",
    ["project_name", "run_name"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
RECONCILER_PASS = Histogram(
    "dstack_reconciler_pass_duration_seconds",
    "Duration of one reconciler pass over one row, by resource kind",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
LEASES_LOST = Counter(
    "dstack_reconciler_leases_lost",
    "Reconciler passes whose lease another worker took over (result discarded), by kind",
    ["kind"],
    registry=REGISTRY,
)


def proxy_request(project_name: str, run_name: str, outcome: str, seconds: float) -> None:
    PROXY_REQUESTS.labels(project_name, run_name, outcome).inc()
    PROXY_LATENCY.labels(project_name, run_name).observe(seconds)


def reconciler_pass(kind: str, seconds: float, lost: bool) -> None:
    RECONCILER_PASS.labels(kind).observe(seconds)
    if lost:
        LEASES_LOST.labels(kind).inc()
