"""The Procfile's ``sqlite`` process: DynamoDB-Streams-style batches of SQLite row changes.

Each ``source = "sqlite"`` trigger of a function is one *stream*, like one DynamoDB stream shard
read by Lambda with ParallelizationFactor 1: one batch in flight at a time, so batches arrive in
order and a failing batch blocks the ones after it. A batch is published as an ``Event`` and the
feed waits for its final outcome (``broker.results``): succeeded, or dead after the function's
retries (the worker dead-letters it). A handler may return ``{"batchItemFailures":
[{"itemIdentifier": SEQ}]}``; the records from the first failed one on are published again as a
new batch, up to the function's ``retries`` times, after which they are logged as failed, counted
(``records_failed`` in the stream's stats hash) and skipped.

The cursor lives in Redis, one hash per stream, and moves in the same MULTI/EXEC as the publish
(``Publisher.publish_many(also=...)``): it holds the last change id published, the in-flight
event id and its records. That transaction also records the batch before as done, so a batch
costs the feed one round trip; and while a batch is in flight the feed reads, converts and
encodes the next one when a full one is waiting, so that it goes out the moment the outcome
arrives. A feed that restarts first waits for the in-flight event's outcome, so a
crash of the feed alone neither loses nor duplicates a change. Change rows are pruned once their
batch is done and that is some seconds old (so Redis's append-only file has it on disk), in small
short write transactions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sqlite3
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from broker import quarantine, results, successors
from broker.connection import TRANSIENT, Backoff, connect
from broker.envelope import Event
from broker.errors import ChangeFeedError, LambdaliteError
from broker.queues import Prepared, Publisher
from broker.registry import Function, Registry, SqliteTrigger, load_registry
from broker.settings import Settings, load_settings
from sources import dynamodb, sqlite_capture

log = logging.getLogger("lambdalite.sqlite")

PRUNE_DELAY = 5.0  # seconds a finished batch waits before its change rows are deleted
PRUNE_EVERY = 0.5  # seconds between prune passes
RETRY_DB_EVERY = 1.0  # seconds between attempts to open a database or find a table
AHEAD_FRESH = 1.0  # seconds a batch encoded ahead keeps its envelope (its created_at); then it gets a new one
# Test-only fault hook: when set to "after-publish", the feed exits with os._exit(9) right after
# a batch and its cursor were stored, before it acts on them; tests use it to kill the feed at the
# worst moment. Never set it in production.
FAULT_ENV = "LAMBDALITE_SQLITE_FAULT"


def cursor_key(function: str, database: Path, table: str) -> str:
    """The Redis hash holding one stream's cursor."""
    label = hashlib.sha256(f"{database}\0{table}".encode()).hexdigest()[:16]
    return f"lambdalite:sqlite:{function}:{table}:{label}"


@dataclass
class Database:
    """One SQLite file, opened once for all the streams that read it."""

    path: Path
    conn: sqlite3.Connection | None = None
    schema_version: int | None = None
    next_try: float = 0.0
    problem: str = ""

    def open(self, now: float) -> sqlite3.Connection | None:
        """The connection, (re)opening it at most once a second; None while it cannot be opened."""
        if self.conn is not None:
            return self.conn
        if now < self.next_try:
            return None
        self.next_try = now + RETRY_DB_EVERY
        try:
            self.conn = sqlite_capture.connect(self.path)
        except ChangeFeedError as e:
            self.complain(str(e) + "; retrying every second")
            return None
        self.schema_version = None
        if self.problem:
            log.info("%s: opened", self.path)
            self.problem = ""
        return self.conn

    def complain(self, message: str) -> None:
        """Log a problem once (until it changes or goes away)."""
        if message != self.problem:
            log.error("%s", message)
            self.problem = message

    def fail(self, e: Exception) -> None:
        """Drop the connection after an SQLite error; it is reopened on a later step."""
        self.complain(f"{self.path}: {e}; retrying every second")
        if self.conn is not None:
            self.conn.close()
        self.conn = None


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


@dataclass
class Stream:
    """One (function, trigger) pair: a table's changes delivered in order to one function."""

    function: Function
    trigger: SqliteTrigger
    db: Database
    key: str
    arn: str
    shape: sqlite_capture.TableShape | None = None
    seen_schema: int | None = None
    loaded: bool = False
    last: int = 0
    event_id: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    outcome: tuple[str, results.Outcome] | None = None  # (event id, its outcome) as Feed.wait saw it
    ahead: Ahead | None = None  # the next batch, ready (and staged) while this one is in flight
    beyond: Ahead | None = None  # the batch after that one, ready to be staged the moment it is in flight
    read_ahead: str = ""  # the batch in flight when the next batch was last read ahead
    read_beyond: str = ""  # the batch in flight when the one after it was last read ahead
    retries: int = 0
    done: int = 0
    done_history: deque[tuple[float, int]] = field(default_factory=deque)
    safe: int = 0
    next_check: float = 0.0
    waiting_said: bool = False
    trouble: str = ""  # the last unexpected error of this stream, logged once
    resume_at: float = 0.0  # after an unexpected error, the stream pauses until then

    @property
    def table(self) -> str:
        return self.trigger.table

    def prunable(self, now: float) -> int:
        """The highest change id whose batch finished at least PRUNE_DELAY seconds ago."""
        while self.done_history and self.done_history[0][0] <= now - PRUNE_DELAY:
            self.safe = self.done_history.popleft()[1]
        return self.safe


class Feed:
    """Every sqlite stream of a registry; :meth:`step` does one round of work for all of them."""

    def __init__(
        self,
        registry: Registry,
        client: redis.Redis,
        poll_interval: float = 0.01,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.publisher = Publisher(client, registry)
        self.poll_interval = poll_interval
        self.clock = clock
        self.databases: dict[Path, Database] = {}
        self.streams: list[Stream] = []
        self.redis_down_until = 0.0
        self.backoff = Backoff(log, "cursors stay; retrying")
        self.next_prune = 0.0
        root = registry.path.resolve().parent
        for fn, trigger in registry.triggers("sqlite"):
            path = trigger.database if trigger.database.is_absolute() else root / trigger.database
            path = path.resolve()
            db = self.databases.setdefault(path, Database(path))
            self.streams.append(Stream(
                fn, trigger, db, cursor_key(fn.name, path, trigger.table),
                dynamodb.stream_arn(str(path), trigger.table),
            ))

    # -- one round ----------------------------------------------------------------------------

    def step(self) -> None:
        """Look at every stream once: capture set-up, outcomes, new batches, pruning."""
        now = self.clock()
        if now < self.redis_down_until:
            return
        fine = True
        for stream in self.streams:
            if now < stream.resume_at:
                continue
            conn = self._capture(stream, now)
            if conn is None:
                continue
            try:
                self._advance(stream, conn, now)
                stream.trouble = ""
            except TRANSIENT as e:
                self._redis_down(e, now)
                fine = False
                break
            except sqlite3.Error as e:
                stream.db.fail(e)
            except Exception as e:  # one stream's fault pauses that stream for a second, never the feed
                if str(e) != stream.trouble:
                    log.exception("%s: stream of table %r failed; retrying every second", stream.function.name,
                                  stream.table)
                stream.trouble, stream.resume_at, stream.loaded = str(e), now + RETRY_DB_EVERY, False
        if fine:
            self.backoff.succeeded()
        if now >= self.next_prune and fine:
            self.next_prune = now + PRUNE_EVERY
            self._prune(now)

    def in_flight(self) -> list[str]:
        """Ids of the events whose outcome the feed is waiting for."""
        return [s.event_id for s in self.streams if s.event_id]

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` s, returning early when an in-flight event gets its outcome."""
        ids = self.in_flight()
        if not ids or self.clock() < self.redis_down_until:
            time.sleep(timeout)
            return
        try:
            found = results.wait_any(self.client, ids, timeout)
        except TRANSIENT as e:
            self._redis_down(e, self.clock())
            return
        except redis.ResponseError:  # a result key of another type: the next step's read repairs it
            time.sleep(timeout)
            return
        for stream in self.streams:
            if stream.event_id in found:  # the next step need not read it again
                stream.outcome = (stream.event_id, found[stream.event_id])

    # -- capture ------------------------------------------------------------------------------

    def _capture(self, stream: Stream, now: float) -> sqlite3.Connection | None:
        db = stream.db
        conn = db.open(now)
        if conn is None:
            return None
        try:
            version = conn.execute("PRAGMA schema_version").fetchone()[0]
            if stream.shape is not None and version == stream.seen_schema:
                return conn
            if stream.shape is None and version == stream.seen_schema and now < stream.next_check:
                return None
            stream.seen_schema = version
            stream.next_check = now + RETRY_DB_EVERY
            stream.shape = sqlite_capture.ensure(conn, stream.table)
            if stream.shape is None:
                if not stream.waiting_said:
                    log.warning("%s: no table %r yet; waiting for it", db.path, stream.table)
                    stream.waiting_said = True
                return None
            stream.seen_schema = conn.execute("PRAGMA schema_version").fetchone()[0]
            stream.waiting_said = False
            return conn
        except ChangeFeedError as e:
            stream.shape = None
            db.complain(f"{db.path}: {e}")
            return None
        except sqlite3.Error as e:
            stream.shape = None
            db.fail(e)
            return None

    # -- delivery -----------------------------------------------------------------------------

    def _load(self, stream: Stream) -> None:
        try:
            stored = self.client.hgetall(stream.key)
        except redis.ResponseError as e:
            if not (quarantine.wrong_type(e) and quarantine.repair(self.client, {stream.key: "hash"})):
                raise
            log.warning("%s: the cursor of table %r is gone; starting at the oldest change in the table",
                        stream.function.name, stream.table)
            stored = {}
        cursor, problems = read_cursor(stored)
        if problems:
            log.warning("redis key %s: %s", stream.key, "; ".join(problems))
        stream.last, stream.done = cursor["last"], cursor["done"]
        stream.event_id, stream.records, stream.retries = cursor["event"], cursor["records"], cursor["retries"]
        stream.outcome, stream.ahead, stream.beyond = None, None, None
        stream.loaded = True
        stream.done_history.append((self.clock(), stream.done))
        if stream.event_id:
            log.info("%s: resuming; waiting for in-flight batch %s", stream.function.name, stream.event_id)

    def _advance(self, stream: Stream, conn: sqlite3.Connection, now: float) -> None:
        if not stream.loaded:
            self._load(stream)
        counts: dict[str, int] | None = None  # once the batch in flight is done: the counters it adds
        settled = ""  # the batch whose outcome this step acts on: what follows drops its staged successor
        if stream.event_id:
            outcome = self._outcome(stream)
            if outcome is None:
                self._prepare(stream, conn, now)  # once per batch in flight (after a restart: now)
                return
            if outcome.ok and successors.clean(outcome.result) and self._released(stream, now):
                self._prepare(stream, conn, now)  # the worker published the next batch: ready the one after
                return
            settled = stream.event_id
            counts = self._settle(stream, outcome, now)
            if counts is None:
                return  # a retry of part of the batch is now in flight
        # From here on the batch in flight (if any) is done; the publish of the next one records that
        # in the same transaction, so a batch costs one round trip.
        ahead, stream.ahead, stream.beyond = stream.ahead, stream.beyond, None
        if ahead is not None and ahead.after == stream.last:
            self._publish(stream, ahead.records, ahead.last, 0, counts, now, ahead, settled)
        else:
            stream.ahead = None
            size = stream.trigger.batch_size
            changes, consumed, _full = sqlite_capture.read_changes(conn, stream.table, stream.last, size)
            window = stream.trigger.batching_window
            if not changes or (len(changes) < size and window and now - changes[0].at < window):
                last = stream.last if changes else consumed  # only unreadable rows: step over them
                if counts is not None or last != stream.last:
                    self._finish(stream, last, now, counts or {}, settled)
                return
            self._publish(stream, self._records(stream, changes), consumed, 0, counts, now, None, settled)
        self._prepare(stream, conn, now)

    def _released(self, stream: Stream, now: float) -> bool:
        """Whether the worker, recording the clean success of the batch in flight, published the
        successor staged after it (the cursor moved past that batch in the same transaction); the
        stream then follows the cursor."""
        try:
            current = self.client.hget(stream.key, "event")
        except redis.ResponseError:  # a cursor of another type: read again (and repaired) from scratch
            self._load(stream)
            return True
        if current is None or current == stream.event_id.encode():
            return False
        ahead = stream.ahead
        if ahead is not None and ahead.job is not None and current == ahead.job.event.id.encode():
            stream.done_history.append((now, stream.last))
            stream.done, stream.last, stream.ahead, stream.beyond = stream.last, ahead.last, stream.beyond, None
            stream.event_id, stream.records, stream.retries = ahead.job.event.id, ahead.records, 0
            log.debug("%s: the worker published %d records up to change %d", stream.function.name,
                      len(ahead.records), ahead.last)
        else:  # a successor staged before this feed (re)started: the cursor tells what is in flight
            self._load(stream)
        return True

    def _prepare(self, stream: Stream, conn: sqlite3.Connection, now: float) -> None:
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
            stream.ahead = self._read_ahead(stream, conn, stream.last, now)
            if stream.ahead is None:
                return
        self._stage(stream)
        if stream.beyond is None and stream.read_beyond != stream.event_id:
            stream.read_beyond = stream.event_id
            stream.beyond = self._read_ahead(stream, conn, stream.ahead.last, now)

    def _read_ahead(self, stream: Stream, conn: sqlite3.Connection, after: int, now: float) -> Ahead | None:
        changes, consumed, full = sqlite_capture.read_changes(conn, stream.table, after, stream.trigger.batch_size)
        if not full:
            return None
        records = self._records(stream, changes)
        text = _json(records)
        job = self._job(stream, records, text) if records else None
        return Ahead(after, consumed, records, text, _pack(text), job, now)

    def _stage(self, stream: Stream) -> None:
        ahead = stream.ahead
        if ahead is None or ahead.job is None or ahead.staged == stream.event_id or ahead.after != stream.last:
            return
        release_by = ahead.job.event.created_at + AHEAD_FRESH  # its envelope's age at the release stays under that
        if release_by <= time.time():
            return  # too old: the feed publishes it anew when the batch in flight is done
        fields = {"last": ahead.last, "event": ahead.job.event.id, "records": ahead.packed, "retries": 0,
                  "done": stream.last, "database": str(stream.db.path), "table": stream.table}
        counters = {"batches": 1, "records": len(ahead.records)}
        self.publisher.stage(stream.event_id, ahead.job, release_by, (stream.key, fields),
                             (stream.key + ":stats", counters))
        ahead.staged = stream.event_id

    def _outcome(self, stream: Stream) -> results.Outcome | None:
        seen, stream.outcome = stream.outcome, None
        if seen is not None and seen[0] == stream.event_id:
            return seen[1]
        return results.fetch(self.client, stream.event_id)

    def _records(self, stream: Stream, changes: list[sqlite_capture.Change]) -> list[dict[str, Any]]:
        records = []
        view, table, arn = stream.trigger.view, stream.table, stream.arn
        for change in changes:
            try:
                records.append(dynamodb.record(
                    change_id=change.id, event_name=change.event_name, keys=change.keys, old=change.old,
                    new=change.new, created=change.at, view=view, table=table, arn=arn,
                ))
            except ChangeFeedError as e:
                log.error("%s: change %d skipped: %s", table, change.id, e)
        return records

    def _job(self, stream: Stream, records: list[dict[str, Any]], text: str) -> Prepared:
        """The batch's event and job; ``text`` (the records' JSON, also the cursor's) is encoded once."""
        event = Event(stream.function.name, payload={"Records": records}, source="sqlite", invocation_type="Event")
        return self.publisher.prepare(event, payload_json='{"Records": ' + text + "}")

    def _publish(self, stream: Stream, records: list[dict[str, Any]], last: int, retries: int,
                 counts: dict[str, int] | None, now: float, ahead: Ahead | None = None, settled: str = "") -> None:
        """Publish a batch and move the cursor to it, in one transaction. With ``counts`` the batch
        in flight is done: the same transaction records that and adds its counters. ``settled``
        names the batch whose staged successor the same transaction drops."""
        if not records:
            self._finish(stream, last, now, counts or {}, settled)
            return
        done = stream.last if counts is not None else stream.done
        if ahead is not None and ahead.job is not None and now - ahead.at <= AHEAD_FRESH:
            job, packed = ahead.job, ahead.packed
        elif ahead is not None:  # read ahead long ago: a new envelope, whose age counts from now
            job, packed = self._job(stream, records, ahead.text), ahead.packed
        else:
            text = _json(records)
            job, packed = self._job(stream, records, text), _pack(text)
        fields = {"last": last, "event": job.event.id, "records": packed, "retries": retries,
                  "done": done, "database": str(stream.db.path), "table": stream.table}

        def also(pipe: Any) -> None:
            pipe.hset(stream.key, mapping=fields)
            for counter, n in {"batches": 1, "records": len(records), **(counts or {})}.items():
                quarantine.incr(pipe, stream.key + ":stats", counter, n)
            if settled:
                successors.drop(pipe, settled)

        self.publisher.publish_many([job], also=also, keys={stream.key: "hash"})
        if os.environ.get(FAULT_ENV) == "after-publish":
            os._exit(9)
        if done != stream.done:
            stream.done = done
            stream.done_history.append((now, done))
        stream.last, stream.event_id, stream.records, stream.retries = last, job.event.id, records, retries
        log.debug("%s: published %d records up to change %d", stream.function.name, len(records), last)

    def _settle(self, stream: Stream, outcome: results.Outcome, now: float) -> dict[str, int] | None:
        """Act on the outcome of the batch in flight: None when part of it is published again (a retry,
        now in flight), else the counters to add as the batch is recorded done."""
        name, records = stream.function.name, stream.records
        if outcome.status != "succeeded":
            log.error("%s: batch of %d records (%s..%s) of table %r is %s after its retries; moving on",
                      name, len(records), _seq(records[0]), _seq(records[-1]), stream.table, outcome.status)
            return {"batches_dead": 1}
        first = _first_failure(outcome.result, records)
        if first is None:
            return {}
        rest = records[first:]
        if stream.retries < stream.function.retries:
            log.warning("%s: %d records from %s reported failed; retrying them (%d of %d)", name,
                        len(rest), _seq(rest[0]), stream.retries + 1, stream.function.retries)
            self._publish(stream, rest, stream.last, stream.retries + 1, None, now, None, stream.event_id)
            return None
        log.error("%s: %d records from %s to %s of table %r still failed after %d retries; skipped",
                  name, len(rest), _seq(rest[0]), _seq(rest[-1]), stream.table, stream.retries)
        return {"records_failed": len(rest)}

    def _finish(self, stream: Stream, last: int, now: float, counts: dict[str, int], settled: str = "") -> None:
        """Record that nothing is in flight up to change ``last`` (adding ``counts``, dropping the
        successor staged after ``settled``), in one transaction."""
        with self.client.pipeline(transaction=True) as pipe:
            quarantine.guard(pipe, {stream.key: "hash"})
            pipe.hset(stream.key, mapping={"last": last, "done": last, "event": "", "records": "",
                                           "retries": 0})
            for counter, n in counts.items():
                quarantine.incr(pipe, stream.key + ":stats", counter, n)
            if settled:
                successors.drop(pipe, settled)
            quarantine.report(pipe.execute())
        stream.last, stream.done, stream.event_id, stream.records, stream.retries = last, last, "", [], 0
        stream.done_history.append((now, last))

    # -- housekeeping -------------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        bounds: dict[tuple[Path, str], int] = {}
        for stream in self.streams:
            where = (stream.db.path, stream.table)
            upto = stream.prunable(now) if stream.loaded else 0
            bounds[where] = min(bounds.get(where, upto), upto)
        for (path, table), upto in bounds.items():
            db = self.databases[path]
            if upto <= 0 or db.conn is None:
                continue
            try:
                sqlite_capture.prune(db.conn, table, upto)
            except sqlite3.OperationalError as e:
                log.debug("%s: prune deferred: %s", path, e)

    def _redis_down(self, e: Exception, now: float) -> None:
        self.redis_down_until = now + self.backoff.failed(e)
        for stream in self.streams:
            stream.loaded = False  # re-read the cursors: a transaction may or may not have applied

    def close(self) -> None:
        for db in self.databases.values():
            if db.conn is not None:
                db.conn.close()
                db.conn = None


def read_cursor(stored: dict[bytes, bytes]) -> tuple[dict[str, Any], list[str]]:
    """A stream's cursor from its Redis hash, and what in it could not be read.

    A field that cannot be read falls back to what still holds: ``last`` to ``done`` (or 0, the
    oldest change still in the table: changes are delivered again rather than lost); an in-flight
    batch whose records cannot be read is no longer waited for (the event itself still runs, or
    is dead-lettered, in the worker; only a partial-failure retry of it is lost).
    """
    problems: list[str] = []
    bad: set[str] = set()

    def text(name: str) -> str | None:
        raw = stored.get(name.encode())
        try:
            return None if raw is None else raw.decode()
        except UnicodeDecodeError:
            problems.append(f"field {name!r} is not UTF-8")
            bad.add(name)
            return None

    def number(name: str) -> int:
        raw = text(name)
        if raw is None or raw.isdigit():
            return int(raw or 0)
        problems.append(f"field {name!r} is {raw[:40]!r}, not a change id or count")
        bad.add(name)
        return 0

    done = number("done")
    last = number("last")
    if "last" in bad:
        last = done
        problems.append(f"carrying on after change {last}" if last else
                        "carrying on from the oldest change still in the table (delivered again: at least once)")
    retries = number("retries")
    event = text("event") or ""
    records: Any = []
    if event:
        try:
            raw = stored.get(b"records") or b""
            # compressed as the feed writes it (zlib's first byte is "x"), or JSON as it was once written
            records = json.loads(zlib.decompress(raw) if raw[:1] == b"x" else raw)
            if not (isinstance(records, list) and records and all(
                    isinstance(r, dict) and isinstance(r.get("dynamodb"), dict) and "SequenceNumber" in r["dynamodb"]
                    for r in records)):
                raise ValueError("not a list of records")
        except (ValueError, zlib.error) as e:
            problems.append(f"the records of in-flight batch {event} cannot be read ({e}); not waiting for its "
                            "outcome (the worker still runs it, or dead-letters it)")
            event, records, retries = "", [], 0
    return {"last": last, "done": done, "event": event, "records": records, "retries": retries}, problems


def _json(records: list[dict[str, Any]]) -> str:
    """The records as strict JSON text, for the cursor and the job.

    orjson takes a tenth of the standard library's time here. Records hold no float but a finite
    ApproximateCreationDateTime (numbers are strings), so orjson's writing NaN as null cannot
    arise; what it refuses (a lone surrogate from a change row written by hand) goes to json.
    """
    try:
        return orjson.dumps(records).decode()
    except orjson.JSONEncodeError:
        return json.dumps(records, allow_nan=False)


def _pack(text: str) -> bytes:
    """Records' JSON as the cursor keeps it: compressed (a tenth of the size to copy and to append
    to Redis's log on every batch)."""
    return zlib.compress(text.encode(), 1)


def _seq(record: dict[str, Any]) -> str:
    return str(record["dynamodb"]["SequenceNumber"]).lstrip("0") or "0"


def _first_failure(result: Any, records: list[dict[str, Any]]) -> int | None:
    """Index of the first record a ReportBatchItemFailures response names, or None for success.

    As Lambda does, an identifier that is missing, empty or not in the batch fails the whole batch.
    """
    if not isinstance(result, dict) or not result.get("batchItemFailures"):
        return None
    failures = result["batchItemFailures"]
    index = {r["dynamodb"]["SequenceNumber"]: i for i, r in enumerate(records)}
    found = []
    if isinstance(failures, list):
        for item in failures:
            ident = item.get("itemIdentifier") if isinstance(item, dict) else None
            if not isinstance(ident, str) or ident not in index:
                return 0
            found.append(index[ident])
    return min(found) if found else 0


def run(feed: Feed, stop: Callable[[], bool], sleep: Callable[[float], None] = time.sleep) -> None:
    """Step until ``stop()``; waits between steps on outcomes or the poll interval.

    A step that fails unexpectedly is logged with its traceback and tried again after a backoff
    (up to 2 s): a bug costs a step, not the process (and honcho stops the stack when one exits).
    """
    backoff = 0.0
    while not stop():
        try:
            feed.step()
        except Exception:
            backoff = min(max(backoff * 2, 0.1), 2.0)
            log.exception("sqlite step failed; trying again in %.1f s", backoff)
            sleep(backoff)
            continue
        backoff = 0.0
        if stop():
            break
        feed.wait(feed.poll_interval)


def main() -> None:
    from broker import logs

    try:
        settings: Settings = load_settings()
        logs.configure(settings.log_level)
        registry = load_registry(settings.config)
    except LambdaliteError as e:
        print(f"lambdalite: {e}", file=sys.stderr)
        sys.exit(1)
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    feed = Feed(registry, connect(settings.redis_dsn), settings.sqlite_poll_interval)
    if not feed.streams:
        log.info("no sqlite triggers in %s; idle", settings.config)
    else:
        log.info("following %d sqlite stream(s)", len(feed.streams))
    try:
        run(feed, lambda: bool(stopping))
    finally:
        feed.close()
    log.info("stopped")


if __name__ == "__main__":
    main()
