"""The server's own instruments for Prometheus (docs/metrics.md): what happens in this
process and is not in the database. Proxy requests (counted by the proxy through the
callback `app.py` gives it) and reconciler passes (timed by `reconcilers/base.py`).

One registry of our own, not prometheus_client's global one: tests build many apps in one
process, and the exposition must not carry the client library's process/platform metrics
twice or collide with another library's names.

The instruments are made at their first use: prometheus_client (with its HTTP server and
WSGI modules) is not needed until a proxied request or a reconciler pass is counted, which
keeps it out of the server's start."""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


@cache
def _instruments() -> SimpleNamespace:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry(auto_describe=True)

    proxy_requests = Counter(
        "dstack_proxy_requests",
        "Requests to services through the proxy, by service and outcome: `forwarded` (a replica "
        "answered) or the proxy's own error status (404, 429, 502, 503, 504, ...)",
        ["project_name", "run_name", "outcome"],
        registry=registry,
    )
    proxy_latency = Histogram(
        "dstack_proxy_request_duration_seconds",
        "Time the service proxy took to answer a request, by service",
        ["project_name", "run_name"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        registry=registry,
    )
    reconciler_pass = Histogram(
        "dstack_reconciler_pass_duration_seconds",
        "Duration of one reconciler pass over one row, by resource kind",
        ["kind"],
        buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
        registry=registry,
    )
    leases_lost = Counter(
        "dstack_reconciler_leases_lost",
        "Reconciler passes whose lease another worker took over (result discarded), by kind",
        ["kind"],
        registry=registry,
    )
    return SimpleNamespace(
        registry=registry,
        proxy_requests=proxy_requests,
        proxy_latency=proxy_latency,
        reconciler_pass=reconciler_pass,
        leases_lost=leases_lost,
    )


def registry() -> CollectorRegistry:
    """This process's instruments, for the exposition (services/prometheus.py)."""
    return _instruments().registry


def proxy_request(project_name: str, run_name: str, outcome: str, seconds: float) -> None:
    i = _instruments()
    i.proxy_requests.labels(project_name, run_name, outcome).inc()
    i.proxy_latency.labels(project_name, run_name).observe(seconds)


def reconciler_pass(kind: str, seconds: float, lost: bool) -> None:
    i = _instruments()
    i.reconciler_pass.labels(kind).observe(seconds)
    if lost:
        i.leases_lost.labels(kind).inc()
