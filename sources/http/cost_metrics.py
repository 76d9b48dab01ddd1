"""``/metrics`` names for what each function would cost on Lambda (read from Redis at each scrape).

The same figures as ``lambdalite status --cost`` (:mod:`broker.cost`): billed requests, GB-seconds,
billed duration and cold starts as counters, and the list price in dollars per architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker import cost
from broker.connection import TRANSIENT
from broker.registry import Registry

log = logging.getLogger(__name__)


class CostCollector(Collector):
    """Reads every function's cost counters at each scrape (one pipelined round trip)."""

    def __init__(self, client: redis.Redis, registry: Registry) -> None:
        self.client = client
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        try:
            usage = cost.usage(self.client, list(self.registry.functions))
        except TRANSIENT as e:  # lambdalite_redis_up says so; nothing to report
            log.warning("metrics: redis unreachable: %s", e)
            return
        requests = CounterMetricFamily("lambdalite_billed_requests", "Invocations Lambda would bill.",
                                       labels=["function"])
        gbs = CounterMetricFamily("lambdalite_billed_gb_seconds",
                                  "Configured memory (GB) times billed duration (s), INIT included.",
                                  labels=["function"])
        billed = CounterMetricFamily("lambdalite_billed_duration_seconds",
                                     "Billed duration: run time and INIT time, each invocation rounded up to 1 ms.",
                                     labels=["function"])
        cold = CounterMetricFamily("lambdalite_cold_starts", "Invocations that included an INIT phase.",
                                   labels=["function"])
        usd = GaugeMetricFamily("lambdalite_lambda_cost_usd",
                                "What these invocations would cost on Lambda at list price, free tier not deducted.",
                                labels=["function", "architecture"])
        for name, use in usage.items():
            requests.add_metric([name], use.requests)
            gbs.add_metric([name], use.gb_seconds)
            billed.add_metric([name], use.billed_ms / 1000)
            cold.add_metric([name], use.inits)
            for arch, dollars in cost.price(use)["usd"].items():
                usd.add_metric([name, arch], dollars)
        yield from (requests, gbs, billed, cold, usd)
