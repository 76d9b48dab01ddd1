"""Delayed events (retries with backoff): a sorted set by due time, released onto queues when due.

Release is one WATCH/MULTI transaction per batch, so with several scalers each due event is
published exactly once and never lost between the set and its queue.
"""

from __future__ import annotations

from typing import Any

import redis

from broker.envelope import Event
from broker.errors import EnvelopeError, UnknownFunctionError
from broker.queues import Publisher

DELAYED_KEY = "lambdalite:delayed"


def schedule(pipe: Any, event: Event, due: float) -> None:
    """Queue the command that runs ``event`` at epoch time ``due``."""
    pipe.zadd(DELAYED_KEY, {event.encode(): due})


def release_due(client: redis.Redis, publisher: Publisher, now: float, batch: int = 100) -> int:
    """Publish every event due by ``now``; returns how many. Foreign entries are dropped."""
    released = 0
    while True:
        with client.pipeline(transaction=True) as pipe:
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
                    except (EnvelopeError, UnknownFunctionError):
                        continue  # dropped below with the rest; nothing can run it
                pipe.multi()
                publisher.publish_many(events, pipeline=pipe)
                pipe.zrem(DELAYED_KEY, *raw)
                pipe.execute()
                released += len(events)
            except redis.WatchError:
                continue
            if len(raw) < batch:
                return released
