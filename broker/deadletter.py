"""Dead letters: events that failed all their attempts (or grew too old), kept for an operator.

Each keeps the original event, the last error, the attempt count and why it was parked;
``lambdalite dlq list / replay / purge`` manage them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import redis

from broker.envelope import Event
from broker.errors import EnvelopeError
from broker.queues import Publisher


def dlq_key(function: str) -> str:
    return f"lambdalite:dlq:{function}"


def add(pipe: Any, event: Event, error: dict[str, Any] | None, reason: str) -> None:
    """Queue the commands that park ``event`` on ``pipe``."""
    record = {"event": event.to_dict(), "error": error, "attempts": event.attempt + 1,
              "reason": reason, "at": time.time()}
    pipe.hset(dlq_key(event.function), event.id, json.dumps(record, default=repr))


def entries(client: redis.Redis, function: str) -> list[dict[str, Any]]:
    """The dead letters of ``function``, oldest first; a corrupt entry is shown as such, not hidden."""
    out = []
    for event_id, raw in client.hgetall(dlq_key(function)).items():
        try:
            record = json.loads(raw)
        except ValueError:
            record = {"event": None, "error": {"errorType": "CorruptEntry"}, "at": 0}
        record["id"] = event_id.decode() if isinstance(event_id, bytes) else event_id
        out.append(record)
    return sorted(out, key=lambda r: r.get("at", 0))


def replay(client: redis.Redis, publisher: Publisher, function: str, ids: list[str] | None = None) -> list[str]:
    """Publish dead letters again as fresh events (attempt 0) and remove them; returns their ids."""
    done = []
    for record in entries(client, function):
        if ids and record["id"] not in ids:
            continue
        try:
            event = Event.from_dict(record["event"])
        except EnvelopeError:
            continue
        fresh = dataclasses.replace(event, attempt=0, created_at=time.time())
        entry_id: str = record["id"]

        def remove(pipe: Any, entry_id: str = entry_id) -> None:
            pipe.hdel(dlq_key(function), entry_id)

        publisher.publish_many([fresh], also=remove)
        done.append(record["id"])
    return done


def purge(client: redis.Redis, function: str) -> int:
    """Drop every dead letter of ``function``; returns how many there were."""
    with client.pipeline() as pipe:
        pipe.hlen(dlq_key(function))
        pipe.delete(dlq_key(function))
        n, _ = pipe.execute()
    return int(n)
