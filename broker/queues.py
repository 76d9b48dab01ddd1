"""Queues and publishing: one RQ queue per function, JSON-serialized jobs, one job function.

Every job names :data:`RUNNER`, lambdalite's own runner, with the event envelope as its only
argument. Nothing that arrives from outside can name code to run: the runner looks the handler
up by function name in the registry, and a worker refuses any other job.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from rq import Queue
from rq.serializers import JSONSerializer
from rq.utils import now as utcnow

from broker import connection, rqlayout, settings, successors
from broker.conditional import Conditional, recorded
from broker.envelope import Event
from broker.errors import EnvelopeError
from broker.registry import Function, Registry
from broker.transaction import Transaction, transaction

RUNNER = "workers.runtime.run"
QUEUE_PREFIX = "lambdalite."
WAKE_CHANNEL = "lambdalite:wake"
SYNC_RESULT_TTL = 600  # seconds a synchronous caller's result is kept (default of LAMBDALITE_SYNC_RESULT_TTL)
FAILURE_TTL = 7 * 24 * 3600


def queue_name(function: str) -> str:
    """The RQ queue name of a function."""
    return QUEUE_PREFIX + function


def function_of_queue(name: str) -> str | None:
    """The function a queue name belongs to, or None for a queue that is not lambdalite's."""
    return name[len(QUEUE_PREFIX) :] if name.startswith(QUEUE_PREFIX) else None


def taking_key(worker_name: str) -> str:
    """The list a worker moves a job id into as it takes it from its queue (BLMOVE), until the job
    is in RQ's started registry: a worker killed in between leaves the id there to be put back,
    not nowhere. (RQ's own intermediate list is shared by every worker of a queue, so nobody can
    tell whose job it is; RQ sweeps it on its maintenance pass.)"""
    return f"lambdalite:taking:{worker_name}"


def function_queue(client: redis.Redis, function: str) -> Queue:
    """The RQ queue of ``function``, with lambdalite's JSON serializer."""
    return Queue(queue_name(function), connection=client, serializer=JSONSerializer)


def rq_timeout(fn: Function) -> int:
    """RQ's timeout of a function's jobs: it only sizes RQ's heartbeats (the worker enforces the
    real limit), with room for the sandbox's start and the outcome's recording."""
    return int(fn.timeout) + 30


def job_options(fn: Function, event: Event) -> dict[str, Any]:
    """The RQ options for an event's job: id, RQ's own timeout and result lifetimes."""
    sync = event.invocation_type == "RequestResponse"
    return {
        # Each attempt is its own RQ job; the event (request) id stays the same.
        "job_id": event.id if event.attempt == 0 else f"{event.id}-a{event.attempt}",
        "timeout": rq_timeout(fn),
        "result_ttl": settings.current().sync_result_ttl if sync else 0,
        "failure_ttl": FAILURE_TTL,
        "description": f"{fn.name} {event.source} {event.id}",
    }


@dataclass(frozen=True, slots=True)
class Prepared:
    """An event with its job hash already built (:meth:`Publisher.prepare`), to be published later
    without the cost of encoding it then."""

    event: Event
    job_id: str
    mapping: dict[str, Any]  # the job hash, less the time it is enqueued


class Publisher:
    """Puts events on their functions' queues and wakes the scaler."""

    def __init__(self, client: redis.Redis, registry: Registry) -> None:
        self.client = client
        self.registry = registry
        self._queues: dict[str, Queue] = {}
        self._templates: dict[tuple[str, int], dict[str, Any]] = {}

    def _queue(self, function: str) -> Queue:
        queue = self._queues.get(function)
        if queue is None:
            queue = self._queues[function] = function_queue(self.client, function)
        return queue

    def publish(self, event: Event, at_front: bool = False) -> str:
        """Enqueue one event; returns its job id. Raises UnknownFunctionError, or redis errors."""
        return self.publish_many([event], at_front=at_front)[0]

    def prepare(self, event: Event, payload_json: str | None = None) -> Prepared:
        """Build ``event``'s job now, to publish later (:meth:`publish_many` takes it as an event).

        ``payload_json``, when the caller has it anyway, is the payload already encoded as strict
        JSON (``json.dumps(event.payload, allow_nan=False)``); it goes into the job as it is, not
        encoded again. Raises UnknownFunctionError, or :class:`EnvelopeError` for a payload that
        is not strict JSON (not checked in ``payload_json``: the caller vouches for it).
        """
        job_id, mapping = self._job_hash(self.registry.get(event.function), event, payload_json)
        return Prepared(event, job_id, mapping)

    def stage(self, after: str, prepared: Prepared, release_by: float, fields: tuple[str, Mapping[str, Any]],
              counters: tuple[str, Mapping[str, int]]) -> None:
        """Stage ``prepared`` as the successor of event ``after`` (:mod:`broker.successors`), in one
        transaction: the worker's transaction that records a clean success of ``after`` publishes it,
        sets ``fields`` (hash key, fields) and adds ``counters`` (hash key, increments), if that comes
        before ``release_by`` (seconds since the epoch). Its enqueue time is the staging's.
        Raises UnknownFunctionError, or redis errors.
        """
        fn = self.registry.get(prepared.event.function)
        queue = self._queue(fn.name)
        stamps = rqlayout.enqueue_stamps(rqlayout.format_time(utcnow()))
        job = (prepared.job_id, rqlayout.job_key(prepared.job_id), {**prepared.mapping, **stamps})
        with transaction(self.client) as pipe:
            successors.stage(pipe, after, release_by, job, (queue.key, rqlayout.QUEUES_KEY, WAKE_CHANNEL, fn.name),
                             fields, counters)
            pipe.execute()

    def publish_many(
        self,
        events: Iterable[Event | Prepared],
        at_front: bool = False,
        also: Callable[[Transaction], None] | None = None,
        pipeline: Transaction | None = None,
    ) -> list[str]:
        """Enqueue events in one round trip (a MULTI/EXEC transaction): all stored, or none.

        ``also(pipe)`` may add commands to the same transaction (a source's cursor or manifest
        update), so that they take effect exactly when the events are stored. A key of another type,
        there or among the queues and job hashes, is moved aside in the same transaction (a
        :class:`broker.transaction.Transaction`), so no command of it fails on its own. With
        ``pipeline`` the commands are queued on the caller's transaction, which the caller executes.
        Raises :class:`EnvelopeError`, storing nothing, for an
        event that is not strict JSON (a NaN or an infinity in its payload): no worker could retry
        or dead-letter it. An event may come :meth:`prepare`-d.
        """
        if pipeline is not None:
            return self._queue_on(pipeline, events, at_front, also)
        with transaction(self.client) as pipe:
            jobs = self._queue_on(pipe, events, at_front, also)
            pipe.execute()
        self._replicated()
        return jobs

    def publish_if(
        self,
        condition: Conditional,
        reads: Sequence[str],
        args: Sequence[Any],
        events: Iterable[Event | Prepared],
        also: Callable[[Transaction], None] | None = None,
    ) -> list[str] | None:
        """Enqueue events as :meth:`publish_many` does, all or none, only if ``condition`` holds on
        the keys ``reads`` and ``args`` (the condition and the writes in one round trip: see
        :mod:`broker.conditional`);
        returns their job ids, or None when the condition did not hold and nothing was stored.
        ``also`` queues plain commands only (a script cannot run another)."""
        with recorded(self.client) as pipe:
            ids = self._queue_on(pipe, events, False, also)
            applied, _ = condition.run(self.client, reads, args, pipe)
        if applied:
            self._replicated()
        return ids if applied else None

    def _replicated(self) -> None:
        """With ``LAMBDALITE_REDIS_WAIT_REPLICAS``, wait for that many replicas to have what was just
        stored; raises :class:`broker.connection.NotReplicated` when they do not in time."""
        current = settings.current()
        if current.redis_wait_replicas:
            connection.wait_for_replicas(self.client, current.redis_wait_replicas, current.redis_wait_timeout)

    def _queue_on(
        self, pipe: Transaction, events: Iterable[Event | Prepared], at_front: bool,
        also: Callable[[Transaction], None] | None,
    ) -> list[str]:
        """Queue the writes on ``pipe`` (which guards every key they write); returns the job ids."""
        ids = []
        queues: set[str] = set()
        stamps = [*itertools.chain.from_iterable(rqlayout.enqueue_stamps(rqlayout.format_time(utcnow())).items())]
        jobs = []
        for item in events:
            prepared = item if isinstance(item, Prepared) else self.prepare(item)
            fn = self.registry.get(prepared.event.function)
            queue = self._queue(fn.name)
            job_id = prepared.job_id
            job_key = rqlayout.job_key(job_id)
            jobs.append((job_key, prepared.mapping, queue.key, job_id))
            ids.append(job_id)
            queues.add(fn.name)
        pushes: dict[str, list[str]] = {}
        for job_key, mapping, queue_key, job_id in jobs:
            # the job's hash and this publish's time, without a copy of the hash for each job
            pipe.hset(job_key, items=[*stamps, *itertools.chain.from_iterable(mapping.items())])
            pushes.setdefault(queue_key, []).append(job_id)
        for queue_key, job_ids in pushes.items():  # one push per queue, in the events' order
            if at_front:  # LPUSH puts its last argument first
                pipe.lpush(queue_key, *reversed(job_ids))
            else:
                pipe.rpush(queue_key, *job_ids)
        for name in queues:
            pipe.sadd(rqlayout.QUEUES_KEY, self._queue(name).key)
        if also is not None:
            also(pipe)
        for name in queues:
            pipe.publish(WAKE_CHANNEL, name)
        return ids

    def _job_hash(self, fn: Function, event: Event, payload_json: str | None = None) -> tuple[str, dict[str, Any]]:
        """The RQ job hash for ``event``: RQ's own fields for such a job, with this event's values
        (its enqueue time stamps are set as it is published).

        Building an ``rq.Job`` per event costs most of a publish's CPU; the fields RQ writes for a
        lambdalite job differ only in id, timestamps, description and data, so RQ's own output for
        the first job of each kind serves as the template for the rest (:func:`rqlayout.job_template`).
        """
        options = job_options(fn, event)
        key = (fn.name, options["result_ttl"])
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = rqlayout.job_template(self._queue(fn.name), RUNNER, options)
        envelope = event.to_dict()
        try:
            if payload_json is None:
                argument = json.dumps(envelope, allow_nan=False).encode()
            else:  # the envelope's JSON with the payload's set in as it is
                del envelope["payload"]
                # the envelope's own fields are strings and finite numbers: orjson, 15 x faster, is exact
                argument = b'{"payload":%s,%s' % (payload_json.encode(), orjson.dumps(envelope)[1:])
        except (TypeError, ValueError) as e:
            raise EnvelopeError(f"event for {event.function!r} is not JSON-serializable: {e}") from e
        mapping = {**template, rqlayout.DATA: rqlayout.job_data(RUNNER, argument),
                   rqlayout.DESCRIPTION: options["description"]}
        return options["job_id"], mapping
