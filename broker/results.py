"""Final outcomes of events, for whoever waits on one (a synchronous caller, the SQLite feed).

A worker records one outcome when an event is done for good: it succeeded, it failed a
synchronous invocation, or it was dead-lettered after its retries. Each outcome is a one-entry
Redis stream, so any number of waiters can block on it (XREAD) and a late waiter still finds it.
Readers skip, with one log line, stream entries that are not outcomes (a foreign writer's), and
move aside a result key of another type, so that the real outcome still reaches them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from broker import connection, quarantine, settings
from broker.errors import OutcomeError
from broker.transaction import Transaction

log = logging.getLogger(__name__)

RESULT_TTL = 900  # seconds an outcome stays readable (default of LAMBDALITE_OUTCOME_TTL)
Status = Literal["succeeded", "failed", "dead"]
_STATUSES = ("succeeded", "failed", "dead")


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
        # Not dataclasses.asdict: it deep-copies the result first, a third of this call's time.
        fields = {name: getattr(self, name) for name in self.__slots__}
        return json.dumps(fields, separators=(",", ":"), default=repr).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Outcome:
        """Parse what :meth:`encode` wrote; raises :class:`OutcomeError` for anything else."""
        try:
            data = json.loads(raw)
        except ValueError as e:  # UnicodeDecodeError included
            raise OutcomeError(f"not JSON: {e}") from e
        if not isinstance(data, dict) or data.get("status") not in _STATUSES:
            raise OutcomeError(f"not an outcome object: {str(raw)[:80]}")
        try:
            outcome = cls(**data)
        except TypeError as e:
            raise OutcomeError(f"malformed outcome: {e}") from e
        if not (isinstance(outcome.error, dict | None) and isinstance(outcome.attempts, int)
                and isinstance(outcome.duration_ms, int | float) and isinstance(outcome.extra, dict)):
            raise OutcomeError("malformed outcome: a field has the wrong type")
        return outcome


def result_key(event_id: str) -> str:
    return f"lambdalite:result:{event_id}"


def record(pipe: Transaction, event_id: str, outcome: Outcome, ttl: int | None = None) -> None:
    """Queue the commands that store ``outcome`` on ``pipe``, kept ``ttl`` seconds (default:
    ``LAMBDALITE_OUTCOME_TTL``)."""
    key = result_key(event_id)
    ttl = settings.current().outcome_ttl if ttl is None else ttl
    pipe.xadd(key, {"outcome": outcome.encode()})
    pipe.expire(key, ttl)


def _read(client: redis.Redis, event_id: str, timeout: float | None) -> Outcome | None:
    """The first entry of the event's stream that is an outcome; waits up to ``timeout`` s for one
    (not at all when None)."""
    key = result_key(event_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    after = b"0-0"
    while True:
        block = None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # in slices: a connection's socket timeout (broker.connection) outlasts a slice, not any deadline
            block = max(1, int(min(left, connection.BLOCK_SLICE) * 1000))
        try:
            entries: Any = client.xread({key: after}, count=10, block=block)
        except redis.ResponseError as e:
            if not quarantine.wrong_type(e) or not quarantine.repair(client, {key: "stream"}):
                raise
            continue
        messages: list[tuple[bytes, dict[bytes, bytes]]] = entries[0][1] if entries else []
        for entry_id, fields in messages:
            after = entry_id
            try:
                return Outcome.decode(fields[b"outcome"])
            except (OutcomeError, KeyError) as e:
                log.warning("redis key %s: entry %s is not an outcome (%s); skipped", key,
                            entry_id.decode(errors="replace"), e)
        if not messages and deadline is None:
            return None


def fetch(client: redis.Redis, event_id: str) -> Outcome | None:
    """The outcome if there is one already, without waiting."""
    return _read(client, event_id, None)


def wait(client: redis.Redis, event_id: str, timeout: float) -> Outcome | None:
    """Block up to ``timeout`` seconds for the outcome; None when none arrived in time."""
    return _read(client, event_id, max(timeout, 0.001))


def wait_any(client: redis.Redis, event_ids: Iterable[str], timeout: float) -> dict[str, Outcome]:
    """Block up to ``timeout`` seconds (:data:`broker.connection.BLOCK_SLICE` at most) until one of the
    events has an outcome; one round trip.

    Returns event id -> outcome for the events whose stream now starts with one (empty when none
    arrived in time). A first entry that is not an outcome is left out, for :func:`fetch` to skip
    with its log line. Raises redis errors, WRONGTYPE for a result key of another type among them.
    """
    ids = {result_key(i).encode(): i for i in event_ids}
    if not ids:
        return {}
    block = max(1, int(min(timeout, connection.BLOCK_SLICE) * 1000))
    entries: Any = client.xread(dict.fromkeys(ids, b"0-0"), count=1, block=block)
    found = {}
    for key, messages in entries or []:
        for _entry_id, fields in messages:
            with contextlib.suppress(OutcomeError, KeyError):
                found[ids[key]] = Outcome.decode(fields[b"outcome"])
    return found
