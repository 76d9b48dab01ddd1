"""What happens after an invocation: counters, outcome streams, retries, dead letters, destinations.

Shared by the worker (an invocation ended) and the scaler (a worker died mid-invocation).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from broker import deadletter, delayed, history, results, stats, successors
from broker.envelope import Event
from broker.errors import EnvelopeError
from broker.queues import Publisher
from broker.registry import Function
from broker.transaction import Transaction, transaction
from workers.context import function_arn
from workers.sandbox import error_object

log = logging.getLogger(__name__)


class Outcomes:
    """Records how a function's events end."""

    def __init__(self, client: redis.Redis, publisher: Publisher, fn: Function) -> None:
        self.connection = client
        self.publisher = publisher
        self.fn = fn
        self.ended = ""  # how the last event queued here ended: succeeded, retried, failed or dead

    def success(self, pipe: Transaction, event: Event, result: Any, duration_ms: float) -> str:
        """Queue on ``pipe`` what a success changes; returns a line for the log (maybe empty)."""
        stats.count(pipe, self.fn.name, "succeeded")
        self.ended = "succeeded"
        results.record(pipe, event.id, results.Outcome(
            "succeeded", result=result, attempts=event.attempt + 1, duration_ms=duration_ms))
        if event.invocation_type == "Event" and successors.clean(result):
            successors.release(pipe, event.id)  # the next event of a stream, staged by its source
        if event.invocation_type == "Event" and self.fn.on_success:
            self.send_destination(pipe, self.fn.on_success, event, "Success", result, error=False)
        return ""

    def failure(self, pipe: Transaction, event: Event, error: dict[str, Any] | None, duration_ms: float,
                condition: str = "RetriesExhausted", dead: bool = False) -> str:
        """Queue on ``pipe`` what a failure changes: a retry with backoff, or the final outcome.

        Synchronous invocations are never retried; asynchronous ones are retried ``retries``
        times, then dead-lettered (and sent to ``on_failure``), as Lambda does.
        """
        sync = event.invocation_type == "RequestResponse"
        retry = not sync and not dead and event.attempt < self.fn.retries
        stats.count(pipe, self.fn.name, "failed")
        self.ended = "failed"
        if retry:
            backoff = self.fn.retry_backoff * (2 ** event.attempt)
            try:
                delayed.schedule(pipe, event.retried(), time.time() + backoff)
            except EnvelopeError as e:  # stored by something other than a source: cannot wait for a retry
                log.error("%s: event %s cannot be kept for a retry (%s); dead-lettering it now", self.fn.name,
                          event.id, e)
                retry = False
        if retry:
            stats.count(pipe, self.fn.name, "retried")
            self.ended = "retried"
            return f"{self.fn.name}: attempt {event.attempt + 1} of {event.id} failed; retrying in {backoff:g}s"
        status: results.Status = "failed" if sync else "dead"
        results.record(pipe, event.id, results.Outcome(
            status, error=error, attempts=event.attempt + 1, duration_ms=duration_ms))
        if sync:
            return ""
        deadletter.add(pipe, event, error, condition)
        stats.count(pipe, self.fn.name, "dead")
        self.ended = "dead"
        if self.fn.on_failure:
            self.send_destination(pipe, self.fn.on_failure, event, condition, error, error=True)
        return (f"{self.fn.name}: event {event.id} dead-lettered after {event.attempt + 1} attempt(s): "
                f"{(error or {}).get('errorType')}")

    def invalid_job(self, pipe: Transaction, job_id: str, event: Event | None, reason: str) -> str:
        """Queue on ``pipe`` what a job this function's worker cannot run changes (one RQ cannot
        read, or that is not a lambdalite job); returns the line for the log.

        It counts as failed and dead, and is parked as a dead letter with reason ``InvalidJob``:
        with its event when the job still holds one (``dlq replay`` runs it again; a synchronous
        caller gets the error as its outcome), else as an entry with no event.
        """
        error = error_object("Runtime.InvalidJob", f"RequestId: {event.id if event else job_id} Error: {reason}")
        if event is not None:
            line = self.failure(pipe, event, error, 0.0, condition="InvalidJob", dead=True)
            return f"{reason}; " + (line or f"the caller of {event.id} gets the error")
        deadletter.add_unreadable(pipe, self.fn.name, job_id, error, "InvalidJob")
        stats.count(pipe, self.fn.name, "failed")
        stats.count(pipe, self.fn.name, "dead")
        self.ended = "dead"
        return f"{reason}; listed as dead letter {job_id} of {self.fn.name} (no event in it to run again)"

    def settle_failure(self, event: Event, error: dict[str, Any] | None, reason: str) -> None:
        """:meth:`failure` in a transaction of its own (for work found abandoned by a dead worker)."""
        with transaction(self.connection) as pipe:
            line = self.failure(pipe, event, error, 0.0)
            history.record(pipe, self.fn.name, time.time(), 0.0, True, self.ended == "dead", event.age * 1000)
            pipe.execute()
        log.warning("%s: %s; %s", self.fn.name, reason, line or "settled as a failed attempt")

    def send_destination(self, pipe: Transaction, target: str, event: Event, condition: str, payload: Any,
                         error: bool) -> None:
        """Queue Lambda's destination record for an asynchronous invocation as an event for ``target``."""
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
            self.publisher.publish_many([Event(function=target, payload=record, source="destination")],
                                        pipeline=pipe)
        except EnvelopeError as e:
            log.error("%s: destination record of %s for %r not sent: %s", self.fn.name, event.id, target, e)
