"""What happens after an invocation: counters, outcome streams, retries, dead letters, destinations.

Shared by the worker (an invocation ended) and the scaler (a worker died mid-invocation).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from broker import deadletter, delayed, results, stats
from broker.connection import TRANSIENT
from broker.envelope import Event
from broker.queues import Publisher
from broker.registry import Function
from workers.context import function_arn

log = logging.getLogger(__name__)


class Outcomes:
    """Records how a function's events end."""

    def __init__(self, client: redis.Redis, publisher: Publisher, fn: Function) -> None:
        self.connection = client
        self.publisher = publisher
        self.fn = fn


    def success(self, event: Event, result: Any, duration_ms: float) -> None:
        with self.connection.pipeline(transaction=True) as pipe:
            stats.count(pipe, self.fn.name, "succeeded")
            results.record(pipe, event.id, results.Outcome(
                "succeeded", result=result, attempts=event.attempt + 1, duration_ms=duration_ms))
            pipe.execute()
        if event.invocation_type == "Event" and self.fn.on_success:
            self.send_destination(self.fn.on_success, event, "Success", result, error=False)

    def failure(self, event: Event, error: dict[str, Any] | None, duration_ms: float,
                       condition: str = "RetriesExhausted", dead: bool = False) -> None:
        sync = event.invocation_type == "RequestResponse"
        retry = not sync and not dead and event.attempt < self.fn.retries
        with self.connection.pipeline(transaction=True) as pipe:
            stats.count(pipe, self.fn.name, "failed")
            if retry:
                backoff = self.fn.retry_backoff * (2 ** event.attempt)
                delayed.schedule(pipe, event.retried(), time.time() + backoff)
                stats.count(pipe, self.fn.name, "retried")
            elif sync:
                results.record(pipe, event.id, results.Outcome(
                    "failed", error=error, attempts=event.attempt + 1, duration_ms=duration_ms))
            else:
                deadletter.add(pipe, event, error, condition)
                stats.count(pipe, self.fn.name, "dead")
                results.record(pipe, event.id, results.Outcome(
                    "dead", error=error, attempts=event.attempt + 1, duration_ms=duration_ms))
            pipe.execute()
        if retry:
            log.info("%s: attempt %d of %s failed; retrying", self.fn.name, event.attempt + 1, event.id)
        elif not sync:
            log.warning("%s: event %s dead-lettered after %d attempt(s): %s", self.fn.name, event.id,
                        event.attempt + 1, (error or {}).get("errorType"))
            if self.fn.on_failure:
                self.send_destination(self.fn.on_failure, event, condition, error, error=True)

    def send_destination(self, target: str, event: Event, condition: str, payload: Any, error: bool) -> None:
        """Lambda's destination record for an asynchronous invocation, as an event for ``target``."""
        record = {
            "version": "1.0",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "requestContext": {"requestId": event.id, "functionArn": function_arn(self.fn.name) + ":$LATEST",
                               "condition": condition, "approximateInvokeCount": event.attempt + 1},
            "requestPayload": event.payload,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                                **({"functionError": "Unhandled"} if error else {})},
            "responsePayload": payload,
        }
        try:
            self.publisher.publish(Event(function=target, payload=record, source="destination"))
        except TRANSIENT:
            log.error("%s: could not send the %s destination record of %s", self.fn.name, condition, event.id)
