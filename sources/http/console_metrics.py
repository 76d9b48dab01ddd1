"""``/metrics`` names for the console's figures that the other collectors do not give (read from
Redis at each scrape, as the console's overview reads them: :func:`sources.http.console_data.overview`).

Counters of how invocations ended, dead letters waiting, the oldest queued event's age, workers by
state, each function's concurrency cap, the duration quantiles, success rate and highest event age
of the history's last hour and minute, and the next schedule tick.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.connection import TRANSIENT
from broker.stats import COUNTERS
from sources.http.console_data import Console, overview

log = logging.getLogger(__name__)


class ConsoleCollector(Collector):
    """The console's overview as Prometheus families, one read per scrape."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def collect(self) -> Iterator[Metric]:
        try:
            rows = overview(self.console)["functions"]
        except TRANSIENT as e:  # lambdalite_redis_up says so
            log.warning("metrics: redis unreachable: %s", e)
            return
        outcomes = CounterMetricFamily("lambdalite_outcomes", "Invocation attempts by how they ended (as status).",
                                       labels=["function", "outcome"])
        dead = GaugeMetricFamily("lambdalite_dead_letters", "Dead letters waiting for replay or purge.",
                                 labels=["function"])
        oldest = GaugeMetricFamily("lambdalite_oldest_queued_age_seconds",
                                   "Age of the oldest event in the function's queue (0: none queued).",
                                   labels=["function"])
        states = GaugeMetricFamily("lambdalite_workers_by_state", "Worker processes by state.",
                                   labels=["function", "state"])
        cap = GaugeMetricFamily("lambdalite_concurrency_cap", "The most workers the function may have at once.",
                                labels=["function"])
        duration = GaugeMetricFamily("lambdalite_duration_last_hour_seconds",
                                     "Invocation duration over the last hour: quantile 0.5 and 0.99 (within a "
                                     "factor of 1.41), 1 the highest.", labels=["function", "quantile"])
        success = GaugeMetricFamily("lambdalite_success_ratio_last_hour",
                                    "Invocations that succeeded over the last hour, 0 to 1 (absent: none ran).",
                                    labels=["function"])
        age = GaugeMetricFamily("lambdalite_event_age_last_minute_seconds",
                                "Highest age of an event when it was taken this minute: iterator age for a "
                                "stream, async event age otherwise.", labels=["function"])
        tick = GaugeMetricFamily("lambdalite_next_schedule_tick_timestamp_seconds",
                                 "When the function's next scheduled event is due (Unix time).", labels=["function"])
        for name, row in rows.items():
            for counter in COUNTERS:
                outcomes.add_metric([name, counter], row[counter])
            dead.add_metric([name], row["dead_letters"])
            oldest.add_metric([name], row["oldest_age_s"] or 0.0)
            for state, n in row["worker_states"].items():
                states.add_metric([name, state], n)
            cap.add_metric([name], row["cap"])
            for quantile, key in (("0.5", "p50_ms"), ("0.99", "p99_ms"), ("1", "max_ms")):
                if row[key] is not None:
                    duration.add_metric([name, quantile], row[key] / 1000)
            if row["success_rate"] is not None:
                success.add_metric([name], row["success_rate"] / 100)
            age.add_metric([name], row["age_minute_ms"] / 1000)
            if row["next_tick"]:
                at = datetime.strptime(row["next_tick"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
                tick.add_metric([name], at.timestamp())
        yield from (outcomes, dead, oldest, states, cap, duration, success, age, tick)
