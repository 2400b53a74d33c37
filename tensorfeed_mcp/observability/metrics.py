"""Prometheus metrics for the hosted mode (prometheus-client, from the `hosted` extra). No label ever holds a
token, a fingerprint or anything a client chose freely: tools are named only when they exist."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tensorfeed_mcp.observability.telemetry import CallOutcome


class PrometheusTelemetry:
    """Telemetry kept as Prometheus metrics in a registry of its own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, active_tenants: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self._tool_calls = Counter(
            "tensorfeed_mcp_tool_calls", "Tool calls by tool and outcome.", ["tool", "outcome"], registry=self.registry
        )
        self._upstream_seconds = Histogram(
            "tensorfeed_mcp_upstream_request_seconds",
            "Time of each request to the TensorFeed API, by path.",
            ["path"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self._upstream_errors = Counter(
            "tensorfeed_mcp_upstream_errors", "Upstream failures by kind.", ["kind"], registry=self.registry
        )
        self._cache_hits = Counter(
            "tensorfeed_mcp_cache_hits",
            "Reads answered from the short cache or by a request already in flight, by path.",
            ["path"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "tensorfeed_mcp_rate_limited_requests",
            "Requests refused by the per-tenant rate limit.",
            registry=self.registry,
        )
        Gauge(
            "tensorfeed_mcp_active_tenants", "Tenants with a request in the last five minutes.", registry=self.registry
        ).set_function(active_tenants)

    def tool_call(self, tool: str, outcome: CallOutcome) -> None:
        self._tool_calls.labels(tool, outcome).inc()

    def upstream_request(self, path: str, seconds: float) -> None:
        self._upstream_seconds.labels(path).observe(seconds)

    def upstream_error(self, kind: str) -> None:
        self._upstream_errors.labels(kind).inc()

    def cache_hit(self, path: str) -> None:
        self._cache_hits.labels(path).inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
