"""Successors: the next event of a stream with one event in flight, published by the very
transaction that records the success of the event before it.

A source that keeps one event in flight (each SQLite stream) reads and encodes the next one while
the one in flight runs, and stages it here with its own bookkeeping for it: fields of one hash
(the stream's cursor) and counters. The worker's transaction that records a *clean* success of
the event in flight (it succeeded, and its result names no ``batchItemFailures``) applies all of
it at once: the job is stored and queued, the fields set, the counters added, the scaler woken.
So the next event starts without a round trip through the source, and the source's bookkeeping
still moves in the same transaction as the publish.

Anything else leaves the staged successor alone: a failure, a dead letter, a partial batch
failure, or a success after the successor's deadline (its envelope's age must stay honest). The
source, which sees every outcome, then deletes the staged successor in the transaction of what it
does instead. Keys of another type met on the way are moved aside (:mod:`broker.quarantine`); a
staged successor missing a part is never applied.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from broker import quarantine, scripts
from broker.transaction import Transaction

KEEP = 3600  # seconds a staged successor that nobody applied or deleted is kept

_RELEASE = scripts.load("successor_release")  # broker/lua/successor_release.lua


def key(event_id: str) -> str:
    """The key of the successor staged after ``event_id``."""
    return f"lambdalite:successor:{event_id}"


def clean(result: Any) -> bool:
    """Whether a succeeded event's ``result`` lets its successor go: it reports no failed items
    (Lambda's ReportBatchItemFailures: a missing or empty ``batchItemFailures`` is a full success)."""
    return not (isinstance(result, dict) and result.get("batchItemFailures"))


def stage(pipe: Transaction, after: str, release_by: float, job: tuple[str, str, Mapping[str, Any]],
          queue: tuple[str, str, str, str], fields: tuple[str, Mapping[str, Any]],
          counters: tuple[str, Mapping[str, int]]) -> None:
    """Queue on ``pipe`` (a transaction) the staging of a successor of event ``after``.

    ``job`` is (job id, job key, job hash); ``queue`` (queue key, the set of queues, the wake-up
    channel, the message to publish on it); ``fields`` (a hash key, fields to set in it);
    ``counters`` (a hash key, increments). It is applied by :func:`release` only until
    ``release_by`` (seconds since the epoch).
    """
    job_id, job_key, mapping = job
    queue_key, queues_key, wake, name = queue
    hash_key, values = fields
    stats_key, increments = counters
    staged: dict[str, Any] = {"by": repr(release_by), "id": job_id, "job": job_key, "queue": queue_key,
                              "queues": queues_key, "hash": hash_key, "stats": stats_key, "wake": wake, "name": name}
    staged.update({f"j:{k}": v for k, v in mapping.items()})
    staged.update({f"h:{k}": v for k, v in values.items()})
    staged.update({f"n:{k}": n for k, n in increments.items()})
    target = key(after)
    pipe.delete(target)
    pipe.hset(target, mapping=staged)  # type: ignore[arg-type]  # the stub's key type
    pipe.expire(target, KEEP)


def release(pipe: Any, event_id: str, now: float | None = None) -> None:
    """Queue on ``pipe`` the application of the successor staged after ``event_id``, if there is one
    and its deadline has not passed (call it only for a clean success; see :func:`clean`)."""
    staged, at = key(event_id), quarantine.stamp()
    _RELEASE.queue(pipe, keys={"staged": staged, "staged_aside": quarantine.aside(staged, at)},
                   args={**quarantine.move_args(), **quarantine.derive_args(at),
                         "now": time.time() if now is None else now})


def drop(pipe: Any, event_id: str) -> None:
    """Queue on ``pipe`` the deletion of the successor staged after ``event_id`` (its source decides)."""
    pipe.delete(key(event_id))
