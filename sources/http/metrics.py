"""Prometheus metrics of the HTTP source (``GET /metrics``), in its own registry.

Invocation, error and throttle counters and the duration histogram count what this process sees;
queue depth, running invocations and workers per function are read from Redis at scrape time
(:func:`broker.stats.status`), so they are the same for every process that serves them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker import stats
from broker.connection import TRANSIENT
from broker.registry import Registry
from sources.http.cost_metrics import CostCollector

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _QueueCollector(Collector):
    """Reads the per-function status snapshot from Redis at each scrape."""

    def __init__(self, client: redis.Redis, registry: Registry) -> None:
        self.client = client
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("lambdalite_redis_up", "1 when Redis answered this scrape, else 0.")
        depth = GaugeMetricFamily("lambdalite_queue_depth", "Events waiting in the function's queue.",
                                  labels=["function"])
        running = GaugeMetricFamily("lambdalite_running", "Invocations running now.", labels=["function"])
        workers = GaugeMetricFamily("lambdalite_workers", "Worker processes of the function.",
                                    labels=["function"])
        try:
            snapshot = stats.status(self.client, self.registry)["functions"]
        except TRANSIENT as e:
            log.warning("metrics: redis unreachable: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for name, row in snapshot.items():
            depth.add_metric([name], row["queued"])
            running.add_metric([name], row["running"])
            workers.add_metric([name], row["workers"])
        yield from (up, depth, running, workers)


class HttpMetrics:
    """The counters the request handlers update, and the text a scrape returns."""

    def __init__(self, client: redis.Redis, registry: Registry) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.invocations = Counter(
            "lambdalite_http_invocations", "Events this process accepted and stored.",
            ["function", "invocation_type"], registry=self.registry,
        )
        self.errors = Counter(
            "lambdalite_http_errors", "Synchronous invocations that failed or timed out.",
            ["function"], registry=self.registry,
        )
        self.throttles = Counter(
            "lambdalite_http_throttles", "Requests refused with 429 or 503 (back-pressure, Redis down).",
            ["function", "reason"], registry=self.registry,
        )
        self.duration = Histogram(
            "lambdalite_http_invocation_duration_seconds",
            "Time from request to outcome of synchronous invocations, as this process saw it.",
            ["function"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
        )
        self.registry.register(_QueueCollector(client, registry))
        self.registry.register(CostCollector(client, registry))
        self._invoked: dict[tuple[str, str], Any] = {}

    def invoked(self, function: str, invocation_type: str) -> None:
        """Count one invocation accepted (its counter looked up once per label pair: this runs
        once per request)."""
        child = self._invoked.get((function, invocation_type))
        if child is None:
            child = self._invoked[function, invocation_type] = self.invocations.labels(function, invocation_type)
        child.inc()

    def refused(self, function: str, reason: str | None) -> None:
        """Count a request refused for back-pressure or an unreachable Redis (``reason``; None counts nothing)."""
        if reason is not None:
            self.throttles.labels(function, reason).inc()

    def throttled(self) -> dict[str, int]:
        """Requests refused per function so far (every reason), as the console's history samples them."""
        out: dict[str, int] = {}
        for family in self.throttles.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    name = sample.labels["function"]
                    out[name] = out.get(name, 0) + int(sample.value)
        return out

    def render(self) -> bytes:
        """The Prometheus text exposition (blocks on Redis: call it from a thread)."""
        return generate_latest(self.registry)
