"""Final outcomes of events, for whoever waits on one (a synchronous caller, the SQLite feed).

A worker records one outcome when an event is done for good: it succeeded, it failed a
synchronous invocation, or it was dead-lettered after its retries. Each outcome is a one-entry
Redis stream, so any number of waiters can block on it (XREAD) and a late waiter still finds it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis

RESULT_TTL = 900  # seconds an outcome stays readable
Status = Literal["succeeded", "failed", "dead"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an event ended. ``error`` is Lambda's ``{"errorType", "errorMessage"}`` object."""

    status: Status
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 1
    duration_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), default=repr).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Outcome:
        return cls(**json.loads(raw))


def result_key(event_id: str) -> str:
    return f"lambdalite:result:{event_id}"


def record(pipe: Any, event_id: str, outcome: Outcome, ttl: int = RESULT_TTL) -> None:
    """Queue the commands that store ``outcome`` on ``pipe`` (a pipeline or a client)."""
    key = result_key(event_id)
    pipe.xadd(key, {"outcome": outcome.encode()})
    pipe.expire(key, ttl)


def _first(entries: Any) -> Outcome | None:
    if not entries:
        return None
    _key, messages = entries[0]
    if not messages:
        return None
    _id, fields = messages[0]
    return Outcome.decode(fields[b"outcome"])


def fetch(client: redis.Redis, event_id: str) -> Outcome | None:
    """The outcome if there is one already, without waiting."""
    return _first(client.xread({result_key(event_id): "0-0"}, count=1))


def wait(client: redis.Redis, event_id: str, timeout: float) -> Outcome | None:
    """Block up to ``timeout`` seconds for the outcome; None when none arrived in time."""
    block = max(1, int(timeout * 1000))
    return _first(client.xread({result_key(event_id): "0-0"}, count=1, block=block))
