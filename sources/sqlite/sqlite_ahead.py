"""The batch after a SQLite stream's batch in flight: read, converted and encoded while that one
runs, and staged to follow it.

A Lambda stream shard's reader keeps the next batch ready too. The staged batch is published by
the worker's transaction that records a clean success of the batch in flight
(:mod:`broker.successors`), with no round trip through the feed; after any other outcome the feed
publishes it itself (or drops it and reads the table again). A batch keeps the envelope it was
encoded with for ``AHEAD_FRESH`` seconds only, so that an event's age still counts from its publish.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.queues import Prepared, Publisher
from sources.sqlite import sqlite_batch, sqlite_capture, sqlite_cursor

if TYPE_CHECKING:
    from sources.sqlite.sqlite_stream import Stream

log = logging.getLogger("lambdalite.sqlite")

AHEAD_FRESH = 1.0  # seconds a batch encoded ahead keeps its envelope (its created_at); then it gets a new one


@dataclass
class Ahead:
    """The batch after the one in flight, read, converted and encoded while that one runs."""

    after: int  # the change it was read after: the last of the batch in flight
    last: int  # the last change it accounts for
    records: list[dict[str, Any]]
    text: str  # the records as JSON, for the job
    packed: bytes  # the same, compressed, for the cursor
    job: Prepared | None  # the event's job; None when no change in it could be converted
    at: float  # when the job was encoded
    staged: str = ""  # the event it is staged after as a successor (broker.successors), if any


def prepare(publisher: Publisher, stream: Stream, conn: sqlite3.Connection, now: float) -> None:
    """Read, convert and encode the batch after the one in flight while that one runs, and stage
    it as that one's successor (:mod:`broker.successors`): the worker's transaction that records
    a clean success of the batch in flight publishes it and moves the cursor, with no round
    trip through the feed (a Lambda stream shard's reader keeps the next batch ready too). The
    batch after it is read as well, so that it is staged the moment its turn comes.

    Only a full batch is read ahead: one with room left could still grow, and is read when the
    batch in flight is done.
    """
    if not stream.event_id:
        return
    if stream.ahead is None:
        if stream.read_ahead == stream.event_id:
            return  # tried while this batch is in flight: not full then
        stream.read_ahead = stream.event_id
        stream.ahead = read(publisher, stream, conn, stream.last, now)
        if stream.ahead is None:
            return
    stage(publisher, stream)
    if stream.beyond is None and stream.read_beyond != stream.event_id:
        stream.read_beyond = stream.event_id
        stream.beyond = read(publisher, stream, conn, stream.ahead.last, now)


def read(publisher: Publisher, stream: Stream, conn: sqlite3.Connection, after: int, now: float) -> Ahead | None:
    """The full batch after change ``after``, read, converted and encoded (cut to fit one payload);
    None when fewer changes wait, or when the first is too large to go at all."""
    changes, consumed, full = sqlite_capture.read_changes(conn, stream.table, after, stream.trigger.batch_size)
    if not full:
        return None
    batch = sqlite_batch.fit(sqlite_batch.records(stream, changes), consumed)
    if batch.too_large is not None:
        return None  # dead-lettered when its turn comes
    records, text = batch.records, batch.text
    job = sqlite_batch.job(publisher, stream, records, text) if records else None
    return Ahead(after, batch.last, records, text, sqlite_cursor.pack(text), job, now)


def stage(publisher: Publisher, stream: Stream) -> None:
    """Stage the batch read ahead as the successor of the batch in flight, unless it is already,
    follows another batch, or is too old to keep its envelope."""
    ahead = stream.ahead
    if ahead is None or ahead.job is None or ahead.staged == stream.event_id or ahead.after != stream.last:
        return
    release_by = ahead.job.event.created_at + AHEAD_FRESH  # its envelope's age at the release stays under that
    if release_by <= time.time():
        return  # too old: the feed publishes it anew when the batch in flight is done
    fields = {"last": ahead.last, "event": ahead.job.event.id, "records": ahead.packed, "retries": 0,
              "done": stream.last, "database": str(stream.db.path), "table": stream.table}
    counters = {"batches": 1, "records": len(ahead.records)}
    publisher.stage(stream.event_id, ahead.job, release_by, (stream.key, fields),
                    (stream.key + ":stats", counters))
    ahead.staged = stream.event_id


def follow(stream: Stream, current: bytes | str, now: float) -> bool:
    """Make the batch read ahead the one in flight if it is the event ``current`` that the cursor
    now names (the worker published it as the successor staged after the batch in flight); False
    when it is not."""
    ahead = stream.ahead
    if ahead is None or ahead.job is None or current != ahead.job.event.id.encode():
        return False
    stream.done_history.append((now, stream.last))
    stream.done, stream.last, stream.ahead, stream.beyond = stream.last, ahead.last, stream.beyond, None
    stream.event_id, stream.records, stream.retries = ahead.job.event.id, ahead.records, 0
    log.debug("%s: the worker published %d records up to change %d", stream.function.name,
              len(ahead.records), ahead.last)
    return True
