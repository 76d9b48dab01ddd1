"""Delayed events (retries with backoff): a sorted set by due time, released onto queues when due.

Release is one WATCH/MULTI transaction per batch, so with several scalers each due event is
published exactly once and never lost between the set and its queue.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from broker import quarantine
from broker.envelope import Event
from broker.errors import EnvelopeError, UnknownFunctionError
from broker.queues import Publisher
from broker.transaction import Transaction, transaction

log = logging.getLogger(__name__)

DELAYED_KEY = "lambdalite:delayed"


def schedule(pipe: Transaction, event: Event, due: float) -> None:
    """Queue the commands that run ``event`` at epoch time ``due``."""
    pipe.zadd(DELAYED_KEY, {event.encode(): due})


def probe(now: float) -> tuple[Any, ...]:
    """The command that looks for an event due by ``now``, to send with others (a step that finds
    none, the usual case, so costs no round trip of its own): a reply that is not empty (an error
    too, which :func:`release_due` repairs) calls for :func:`release_due`."""
    return ("ZRANGEBYSCORE", DELAYED_KEY, "-inf", now, "LIMIT", 0, 1)


def release_due(client: redis.Redis, publisher: Publisher, now: float, batch: int = 100) -> int:
    """Publish every event due by ``now``; returns how many.

    An entry that is not an event, or names a function that is not in the registry, is dropped
    with one log line (nothing can run it); a key of another type is moved aside.
    """
    released = 0
    while True:
        dropped: list[tuple[bytes, Exception]] = []
        with transaction(client) as pipe:
            try:
                pipe.watch(DELAYED_KEY)  # type: ignore[no-untyped-call]
                raw: list[bytes] = pipe.zrangebyscore(DELAYED_KEY, "-inf", now, start=0, num=batch)  # type: ignore[assignment]
                if not raw:
                    return released
                events = []
                for member in raw:
                    try:
                        event = Event.decode(member)
                        publisher.registry.get(event.function)
                        events.append(event)
                    except (EnvelopeError, UnknownFunctionError) as e:
                        dropped.append((member, e))  # removed below with the rest; nothing can run it
                pipe.multi()
                publisher.publish_many(events, pipeline=pipe)
                pipe.zrem(DELAYED_KEY, *raw)
                pipe.execute()
                released += len(events)
            except redis.WatchError:
                continue
            except redis.ResponseError as e:
                if quarantine.wrong_type(e) and quarantine.repair(client, {DELAYED_KEY: "zset"}):
                    continue
                raise
        for member, error in dropped:
            log.warning("redis key %s: entry %r is not an event that can run (%s); dropped", DELAYED_KEY,
                        member[:80], error)
        if len(raw) < batch:
            return released
