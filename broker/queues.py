"""Queues and publishing: one RQ queue per function, JSON-serialized jobs, one job function.

Every job names :data:`RUNNER`, lambdalite's own runner, with the event envelope as its only
argument. Nothing that arrives from outside can name code to run: the runner looks the handler
up by function name in the registry, and a worker refuses any other job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from broker.envelope import Event
from broker.registry import Function, Registry

RUNNER = "workers.runtime.run"
QUEUE_PREFIX = "lambdalite."
WAKE_CHANNEL = "lambdalite:wake"
SYNC_RESULT_TTL = 600  # seconds a synchronous caller's result is kept
FAILURE_TTL = 7 * 24 * 3600


def queue_name(function: str) -> str:
    """The RQ queue name of a function."""
    return QUEUE_PREFIX + function


def function_of_queue(name: str) -> str | None:
    """The function a queue name belongs to, or None for a queue that is not lambdalite's."""
    return name[len(QUEUE_PREFIX) :] if name.startswith(QUEUE_PREFIX) else None


def function_queue(client: redis.Redis, function: str) -> Queue:
    """The RQ queue of ``function``, with lambdalite's JSON serializer."""
    return Queue(queue_name(function), connection=client, serializer=JSONSerializer)


def job_options(fn: Function, event: Event) -> dict[str, Any]:
    """The RQ options for an event's job: id, RQ's own timeout and result lifetimes."""
    sync = event.invocation_type == "RequestResponse"
    return {
        # Each attempt is its own RQ job; the event (request) id stays the same.
        "job_id": event.id if event.attempt == 0 else f"{event.id}-a{event.attempt}",
        # RQ's timeout only sizes its heartbeats here; the worker enforces the real limit.
        "timeout": int(fn.timeout) + 30,
        "result_ttl": SYNC_RESULT_TTL if sync else 0,
        "failure_ttl": FAILURE_TTL,
        "description": f"{fn.name} {event.source} {event.id}",
    }


class Publisher:
    """Puts events on their functions' queues and wakes the scaler."""

    def __init__(self, client: redis.Redis, registry: Registry) -> None:
        self.client = client
        self.registry = registry
        self._queues: dict[str, Queue] = {}

    def _queue(self, function: str) -> Queue:
        queue = self._queues.get(function)
        if queue is None:
            queue = self._queues[function] = function_queue(self.client, function)
        return queue

    def publish(self, event: Event, at_front: bool = False) -> Job:
        """Enqueue one event; raises UnknownFunctionError, or redis errors when Redis is down."""
        return self.publish_many([event], at_front=at_front)[0]

    def publish_many(
        self,
        events: Iterable[Event],
        at_front: bool = False,
        also: Callable[[Pipeline], None] | None = None,
        pipeline: Pipeline | None = None,
    ) -> list[Job]:
        """Enqueue events in one round trip (a MULTI/EXEC transaction): all stored, or none.

        ``also(pipe)`` may add commands to the same transaction (a source's cursor or manifest
        update), so that they take effect exactly when the events are stored. With ``pipeline``
        the commands are queued on the caller's transaction, which the caller executes.
        """
        if pipeline is not None:
            return self._queue_on(pipeline, events, at_front, also)
        with self.client.pipeline(transaction=True) as pipe:
            jobs = self._queue_on(pipe, events, at_front, also)
            pipe.execute()
        return jobs

    def _queue_on(
        self, pipe: Pipeline, events: Iterable[Event], at_front: bool, also: Callable[[Pipeline], None] | None
    ) -> list[Job]:
        jobs = []
        woken: set[str] = set()
        for event in events:
            fn = self.registry.get(event.function)
            job = self._queue(fn.name).enqueue_call(
                RUNNER, args=(event.to_dict(),), pipeline=pipe, at_front=at_front,
                **job_options(fn, event),
            )
            jobs.append(job)
            woken.add(fn.name)
        if also is not None:
            also(pipe)
        for name in woken:
            pipe.publish(WAKE_CHANNEL, name)
        return jobs
