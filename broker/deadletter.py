"""Dead letters: events that failed all their attempts (or grew too old), kept for an operator.

Each keeps the original event, the last error, the attempt count and why it was parked;
``lambdalite dlq list / replay / purge`` manage them, and ``dlq park`` moves here what is queued
for a function a reload removed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, cast

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from broker import quarantine, rqlayout
from broker.envelope import Event
from broker.errors import EnvelopeError, UnknownFunctionError
from broker.queues import Publisher, function_queue
from broker.transaction import Transaction, transaction

log = logging.getLogger(__name__)


def dlq_key(function: str) -> str:
    return f"lambdalite:dlq:{function}"


def add(pipe: Transaction, event: Event, error: dict[str, Any] | None, reason: str) -> None:
    """Queue the commands that park ``event`` on ``pipe``."""
    record = {"event": event.to_dict(), "error": error, "attempts": event.attempt + 1,
              "reason": reason, "at": time.time()}
    pipe.hset(dlq_key(event.function), event.id, json.dumps(record, default=repr))


def add_unreadable(pipe: Transaction, function: str, entry_id: str, error: dict[str, Any], reason: str) -> None:
    """Queue the commands that park, as ``entry_id``, something that was to run as ``function`` but
    holds no event that can run again (listed by ``dlq list``, skipped by ``dlq replay``)."""
    record = {"event": None, "error": error, "attempts": 0, "reason": reason, "at": time.time()}
    pipe.hset(dlq_key(function), entry_id, json.dumps(record))


def entries(client: redis.Redis, function: str) -> list[dict[str, Any]]:
    """The dead letters of ``function``, oldest first; a corrupt entry is shown as such, not hidden.

    An entry that is not a dead letter, or a key that is not a hash, is also logged (one line
    naming the key).
    """
    key = dlq_key(function)
    try:
        stored = client.hgetall(key)
    except redis.ResponseError as e:
        if not quarantine.wrong_type(e):
            raise
        log.warning("%s; no dead letters of %s can be read from it", quarantine.describe(client, key, "hash"),
                    function)
        return []
    out = [_record(key, raw_id, raw) for raw_id, raw in stored.items()]
    return sorted(out, key=lambda r: r.get("at", 0))


def _record(key: str, raw_id: bytes | str, raw: bytes | str) -> dict[str, Any]:
    entry_id = raw_id.decode(errors="replace") if isinstance(raw_id, bytes) else raw_id
    try:
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not an object")
        if not isinstance(record.get("at", 0), int | float):
            raise ValueError("'at' is not a time")
    except ValueError as e:
        log.warning("redis key %s: dead letter %s is not readable (%s); listed as CorruptEntry", key,
                    entry_id, e)
        record = {"event": None, "error": {"errorType": "CorruptEntry", "errorMessage": str(e)}, "at": 0}
    record["id"] = entry_id
    return record


def count(client: redis.Redis, function: str) -> int:
    """How many dead letters ``function`` has (0 for a key of another type)."""
    try:
        return int(client.hlen(dlq_key(function)))
    except redis.ResponseError as e:
        if not quarantine.wrong_type(e):
            raise
        return 0


def page(client: redis.Redis, function: str, cursor: int = 0, size: int = 50) -> tuple[list[dict[str, Any]], int]:
    """About ``size`` dead letters from ``cursor`` (``HSCAN``: no order, each listed once while the
    hash is not rehashed) and the cursor of the next page (0: none). However many there are, a page
    costs the same."""
    key = dlq_key(function)
    try:
        nxt, stored = cast("tuple[int, dict[bytes, bytes]]", client.hscan(key, cursor, count=size))
    except redis.ResponseError as e:
        if not quarantine.wrong_type(e):
            raise
        return [], 0
    out = [_record(key, raw_id, raw) for raw_id, raw in stored.items()]
    return sorted(out, key=lambda r: r.get("at", 0)), int(nxt)


def _chosen(client: redis.Redis, function: str, ids: list[str]) -> list[dict[str, Any]]:
    key = dlq_key(function)
    try:
        stored = client.hmget(key, ids)
    except redis.ResponseError as e:
        if not quarantine.wrong_type(e):
            raise
        return []
    return [_record(key, i, raw) for i, raw in zip(ids, stored, strict=True) if raw is not None]


def replay(client: redis.Redis, publisher: Publisher, function: str, ids: list[str] | None = None) -> list[str]:
    """Publish dead letters again as fresh events (attempt 0) and remove them; returns their ids.

    An entry that holds no event is logged and left where it is.
    """
    done = []
    for record in _chosen(client, function, ids) if ids else entries(client, function):
        try:
            event = Event.from_dict(record.get("event"))
            publisher.registry.get(event.function)
        except (EnvelopeError, UnknownFunctionError) as e:
            if (record.get("error") or {}).get("errorType") != "CorruptEntry":  # else entries() told of it
                log.warning("redis key %s: dead letter %s holds no event to replay (%s); left in place",
                            dlq_key(function), record["id"], e)
            continue
        fresh = dataclasses.replace(event, attempt=0, created_at=time.time())
        entry_id: str = record["id"]

        def remove(pipe: Any, entry_id: str = entry_id) -> None:
            pipe.hdel(dlq_key(function), entry_id)

        publisher.publish_many([fresh], also=remove)
        done.append(record["id"])
    return done


def purge(client: redis.Redis, function: str, ids: list[str] | None = None) -> int:
    """Drop the dead letters of ``function`` with these ``ids``, or every one; returns how many went
    (a key of another type is dropped too, with one log line)."""
    key = dlq_key(function)
    if ids:
        try:
            return int(client.hdel(key, *ids))
        except redis.ResponseError as e:
            if not quarantine.wrong_type(e):
                raise
            return 0
    with client.pipeline() as pipe:
        pipe.type(key)
        pipe.hlen(key)
        pipe.delete(key)
        found, n, _ = pipe.execute(raise_on_error=False)
    if isinstance(n, Exception):
        log.warning("redis key %s held a %s, not dead letters; removed", key, found.decode())
        return 0
    return int(n)


def park(client: redis.Redis, function: str) -> int:
    """Move every event queued for ``function``, a function the running stack no longer has, into its
    dead letters (reason ``FunctionRemoved``); returns how many. ``dlq replay`` runs them once the
    function is back. Nothing takes from the queue of a removed function, so nothing races this; a
    job that holds no readable event is listed as an entry without one."""
    queue = function_queue(client, function)
    error = {"errorType": "Runtime.FunctionRemoved",
             "errorMessage": f"function {function} was removed from lambdalite.toml while this event was queued"}
    moved = 0
    for raw in cast("list[bytes]", client.lrange(queue.key, 0, -1)):
        job_id = raw.decode(errors="replace")
        try:
            job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
            event: Event | None = Event.from_dict(job.args[0])
        except Exception:  # RQ's parsing raises anything: kept as an entry with no event
            event = None
        with transaction(client) as pipe:
            pipe.lrem(queue.key, 1, raw)  # type: ignore[arg-type]  # redis-py sends bytes as they are
            pipe.delete(rqlayout.job_key(job_id))
            if event is not None:
                add(pipe, event, error, "FunctionRemoved")
            else:
                add_unreadable(pipe, function, job_id, error, "FunctionRemoved")
            pipe.execute()
        moved += 1
    return moved
