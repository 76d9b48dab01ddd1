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

This module holds the feed's rounds and the process; the rest is in :mod:`sources.sqlite.sqlite_stream`
(what is kept per database and stream), :mod:`sources.sqlite.sqlite_cursor` (the cursor's hash),
:mod:`sources.sqlite.sqlite_batch` (a batch's records and event, and its reported failures),
:mod:`sources.sqlite.sqlite_ahead` (the next batch, read ahead and staged), :mod:`sources.sqlite.sqlite_capture`
(the triggers that record each change) and :mod:`sources.sqlite.dynamodb` (the records' format).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import redis

from broker import quarantine, results, revision, stacklock, standby, startup, successors
from broker.connection import TRANSIENT, Backoff, connect
from broker.errors import LambdaliteError
from broker.queues import Publisher
from broker.registry import Registry
from broker.transaction import transaction
from sources.sqlite import dynamodb, sqlite_ahead, sqlite_batch, sqlite_capture, sqlite_cursor
from sources.sqlite.sqlite_ahead import Ahead
from sources.sqlite.sqlite_stream import RETRY_DB_EVERY, Database, Stream

log = logging.getLogger("lambdalite.sqlite")

PRUNE_EVERY = 0.5  # seconds between prune passes
# Test-only fault hook: when set to "after-publish", the feed exits with os._exit(9) right after
# a batch and its cursor were stored, before it acts on them; tests use it to kill the feed at the
# worst moment. Never set it in production.
FAULT_ENV = "LAMBDALITE_SQLITE_FAULT"


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
        self.streams = self._streams_of(registry)
        self._next: Registry | None = None  # a revision to follow, handed over by another thread
        self.changed = threading.Event()  # set with it

    def _streams_of(self, registry: Registry) -> list[Stream]:
        streams = []
        root = registry.path.resolve().parent
        for fn, trigger in registry.triggers("sqlite"):
            path = trigger.database if trigger.database.is_absolute() else root / trigger.database
            path = path.resolve()
            db = self.databases.setdefault(path, Database(path))
            streams.append(Stream(
                fn, trigger, db, sqlite_cursor.cursor_key(fn.name, path, trigger.table),
                dynamodb.stream_arn(str(path), trigger.table),
            ))
        return streams

    def follow(self, registry: Registry) -> None:
        """Follow ``registry`` (a new revision) from the next step on (thread-safe)."""
        self._next = registry
        self.changed.set()

    def _apply(self, registry: Registry) -> None:
        """The streams of ``registry`` from now on. A stream whose function and trigger stay keeps
        going as it was; a new or changed one starts from its cursor in Redis, as after a restart
        (a changed batch size applies from the next batch); a removed one stops (its cursor stays,
        should it come back)."""
        self.publisher.registry.replace(registry)
        old = {s.key: s for s in self.streams}
        streams = []
        for stream in self._streams_of(registry):
            kept = old.get(stream.key)
            if kept is not None and kept.trigger == stream.trigger and kept.function == stream.function:
                streams.append(kept)
            else:
                streams.append(stream)
        used = {s.db.path for s in streams}
        for path in [p for p in self.databases if p not in used]:
            db = self.databases.pop(path)
            if db.conn is not None:
                db.conn.close()
                db.conn = None
        self.streams = streams
        log.info("following %d sqlite stream(s)", len(streams))

    # -- one round ----------------------------------------------------------------------------

    def step(self) -> None:
        """Look at every stream once: capture set-up, outcomes, new batches, pruning."""
        if self._next is not None:
            registry, self._next = self._next, None
            self.changed.clear()
            self._apply(registry)
        now = self.clock()
        if now < self.redis_down_until:
            return
        fine = True
        for stream in self.streams:
            if now < stream.resume_at:
                continue
            conn = stream.capture(now)
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

    # -- delivery -----------------------------------------------------------------------------

    def _load(self, stream: Stream) -> None:
        try:
            stored = cast("dict[bytes, bytes]", self.client.hgetall(stream.key))
        except redis.ResponseError as e:
            if not (quarantine.wrong_type(e) and quarantine.repair(self.client, {stream.key: "hash"})):
                raise
            log.warning("%s: the cursor of table %r is gone; starting at the oldest change in the table",
                        stream.function.name, stream.table)
            stored = {}
        cursor, problems = sqlite_cursor.read_cursor(stored)
        if problems:
            log.warning("redis key %s: %s", stream.key, "; ".join(problems))
        stream.last, stream.done = cursor["last"], cursor["done"]
        stream.event_id, stream.records, stream.retries = cursor["event"], cursor["records"], cursor["retries"]
        stream.outcome, stream.ahead, stream.beyond = None, None, None
        stream.loaded = True
        stream.done_history.append((self.clock(), stream.done))
        file = stored.get(b"file", b"").decode("ascii", "replace")
        if file and stream.db.file and file != stream.db.file:  # replaced while the feed was away
            log.warning("%s: %s is another file than the one table %r was read from (device:inode %s, was %s); "
                        "reading it from its first change", stream.function.name, stream.db.path, stream.table,
                        stream.db.file, file)
            stream.replaced = True
        if stream.event_id:
            log.info("%s: resuming; waiting for in-flight batch %s", stream.function.name, stream.event_id)

    def _advance(self, stream: Stream, conn: sqlite3.Connection, now: float) -> None:
        if not stream.loaded:
            self._load(stream)
        if stream.replaced and not stream.event_id:
            self._rebase(stream, now, {}, "")
        counts: dict[str, int] | None = None  # once the batch in flight is done: the counters it adds
        settled = ""  # the batch whose outcome this step acts on: what follows drops its staged successor
        if stream.event_id:
            outcome = self._outcome(stream)
            if outcome is None:  # ready the next batch, once per batch in flight (after a restart: now)
                self._prepare(stream, conn, now)
                return
            if outcome.ok and successors.clean(outcome.result) and self._released(stream, now):
                # the worker published the next batch: ready the one after
                self._prepare(stream, conn, now)
                return
            settled = stream.event_id
            counts = self._settle(stream, outcome, now)
            if counts is None:
                return  # a retry of part of the batch is now in flight
        if stream.replaced:  # the batch in flight was the old file's last: start the new file's
            self._rebase(stream, now, counts or {}, settled)
            return
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
            batch = sqlite_batch.fit(sqlite_batch.records(stream, changes), consumed)
            if batch.too_large is not None:
                self._too_large(stream, batch, now, counts or {}, settled)
                return
            self._publish(stream, batch.records, batch.last, 0, counts, now, None, settled, batch.text)
        self._prepare(stream, conn, now)

    def _prepare(self, stream: Stream, conn: sqlite3.Connection, now: float) -> None:
        """Read the next batch ahead, unless the database was replaced (its cursor starts again)."""
        if not stream.replaced:
            sqlite_ahead.prepare(self.publisher, stream, conn, now)

    def _rebase(self, stream: Stream, now: float, counts: dict[str, int], settled: str) -> None:
        """Start the stream again at the first change of a replaced database, once nothing of the
        old one is in flight: what was read ahead from the old file is dropped, and nothing of the
        new file's change table is pruned until its own batches are done."""
        stream.ahead = stream.beyond = None
        stream.read_ahead = stream.read_beyond = ""
        stream.done_history.clear()
        stream.safe = 0
        self._finish(stream, 0, now, counts, settled)
        stream.replaced = False

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
        if not sqlite_ahead.follow(stream, current, now):
            # not the batch read ahead: a successor staged before this feed (re)started; the cursor
            # tells what is in flight
            self._load(stream)
        return True

    def _outcome(self, stream: Stream) -> results.Outcome | None:
        seen, stream.outcome = stream.outcome, None
        if seen is not None and seen[0] == stream.event_id:
            return seen[1]
        return results.fetch(self.client, stream.event_id)

    def _publish(self, stream: Stream, records: list[dict[str, Any]], last: int, retries: int,
                 counts: dict[str, int] | None, now: float, ahead: Ahead | None = None, settled: str = "",
                 text: str | None = None) -> None:
        """Publish a batch and move the cursor to it, in one transaction. With ``counts`` the batch
        in flight is done: the same transaction records that and adds its counters. ``settled``
        names the batch whose staged successor the same transaction drops; ``text`` is the records'
        JSON when the caller has it."""
        if not records:
            self._finish(stream, last, now, counts or {}, settled)
            return
        done = stream.last if counts is not None else stream.done
        if ahead is not None and ahead.job is not None and now - ahead.at <= sqlite_ahead.AHEAD_FRESH:
            job, packed = ahead.job, ahead.packed
        elif ahead is not None:  # read ahead long ago: a new envelope, whose age counts from now
            job, packed = sqlite_batch.job(self.publisher, stream, records, ahead.text), ahead.packed
        else:
            text = sqlite_batch.to_json(records) if text is None else text
            job, packed = sqlite_batch.job(self.publisher, stream, records, text), sqlite_cursor.pack(text)
        fields = {"last": last, "event": job.event.id, "records": packed, "retries": retries,
                  "done": done, "database": str(stream.db.path), "table": stream.table, "file": stream.db.file}

        def also(pipe: Any) -> None:
            pipe.hset(stream.key, mapping=fields)
            for counter, n in {"batches": 1, "records": len(records), **(counts or {})}.items():
                quarantine.incr(pipe, stream.key + ":stats", counter, n)
            if settled:
                successors.drop(pipe, settled)

        self.publisher.publish_many([job], also=also)
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
            log.error("%s: batch of %d records (%s..%s) of table %r is %s after its retries; moving on", name,
                      len(records), sqlite_batch.seq(records[0]), sqlite_batch.seq(records[-1]), stream.table,
                      outcome.status)
            return {"batches_dead": 1}
        first = sqlite_batch.first_failure(outcome.result, records)
        if first is None:
            return {}
        rest = records[first:]
        if stream.retries < stream.function.retries:
            log.warning("%s: %d records from %s reported failed; retrying them (%d of %d)", name,
                        len(rest), sqlite_batch.seq(rest[0]), stream.retries + 1, stream.function.retries)
            self._publish(stream, rest, stream.last, stream.retries + 1, None, now, None, stream.event_id)
            return None
        log.error("%s: %d records from %s to %s of table %r still failed after %d retries; skipped",
                  name, len(rest), sqlite_batch.seq(rest[0]), sqlite_batch.seq(rest[-1]), stream.table, stream.retries)
        return {"records_failed": len(rest)}

    def _too_large(self, stream: Stream, batch: sqlite_batch.Fit, now: float, counts: dict[str, int],
                   settled: str) -> None:
        """Dead-letter alone a record too large for any payload and go on after it, in one transaction."""
        record, said = batch.too_large, []
        if record is None:
            return

        def park(pipe: Any) -> None:
            said.append(sqlite_batch.dead_letter_too_large(pipe, stream, record, batch.size))

        self._finish(stream, batch.last, now, {**counts, "records_failed": counts.get("records_failed", 0) + 1},
                     settled, also=park)
        log.error("%s: %s: %s; dead-lettered alone, the stream goes on", stream.function.name, sqlite_batch.TOO_LARGE,
                  said[0] if said else "")

    def _finish(self, stream: Stream, last: int, now: float, counts: dict[str, int], settled: str = "",
                also: Callable[[Any], None] | None = None) -> None:
        """Record that nothing is in flight up to change ``last`` (adding ``counts``, dropping the
        successor staged after ``settled``, and queuing what ``also`` adds), in one transaction."""
        with transaction(self.client) as pipe:
            if also is not None:
                also(pipe)
            pipe.hset(stream.key, mapping={"last": last, "done": last, "event": "", "records": "",
                                           "retries": 0, "file": stream.db.file})
            for counter, n in counts.items():
                quarantine.incr(pipe, stream.key + ":stats", counter, n)
            if settled:
                successors.drop(pipe, settled)
            pipe.execute()
        stream.last, stream.done, stream.event_id, stream.records, stream.retries = last, last, "", [], 0
        stream.done_history.append((now, last))

    # -- housekeeping -------------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        bounds: dict[tuple[Path, str], int] = {}
        for stream in self.streams:
            where = (stream.db.path, stream.table)
            upto = stream.prunable(now) if stream.loaded and not stream.replaced else 0
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


def run(feed: Feed, stop: Callable[[], bool], sleep: Callable[[float], None] = time.sleep,
        idle: Callable[[], None] = lambda: None) -> None:
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
        if feed.streams:
            feed.wait(feed.poll_interval)
        else:  # nothing to follow until a revision brings a sqlite trigger
            idle()  # stands by in a bare interpreter, where it can
            feed.changed.wait(1.0)


def _stand_by(dsn: str, number: int) -> None:
    """Become :mod:`broker.standby` in a bare interpreter until a revision other than ``number``
    runs; then this module runs again. Returns only if the exec fails."""
    stacklock.keep_across_exec()
    locks = ",".join(str(fd) for fd in stacklock.held_fds())
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, "-I", "-S", standby.__file__, dsn, str(number), locks, "--",
                                  sys.executable, "-m", "sources.sqlite"])
    except OSError as e:
        log.warning("cannot stand by (%s); following revisions here", e)


def main() -> None:
    settings, registry = startup.start("sqlite")
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    client = connect(settings.redis_dsn)
    try:
        running = revision.running(client, settings.config)
    except (LambdaliteError, *TRANSIENT):
        running = None  # the follower tries again
    feed = Feed(running or registry, client, settings.sqlite_poll_interval)
    number = running.revision.number if running is not None and running.revision is not None else 0
    if not feed.streams and standby.supported(settings.redis_dsn):
        log.info("no sqlite triggers in revision %d of %s: standing by until a revision brings some", number,
                 settings.config.name)
        feed.close()
        client.close()
        _stand_by(settings.redis_dsn, number)
    log.info("following %d sqlite stream(s)", len(feed.streams))
    follower = revision.Follower(client, settings.config, feed.follow, name="sqlite-revision")
    follower.start()
    def idle() -> None:
        if standby.supported(settings.redis_dsn) and not stopping:
            rev = feed.publisher.registry.revision
            log.info("no sqlite triggers in revision %d: standing by until a revision brings some",
                     rev.number if rev is not None else 0)
            feed.close()
            _stand_by(settings.redis_dsn, rev.number if rev is not None else 0)

    try:
        run(feed, lambda: bool(stopping), idle=idle)
    finally:
        follower.stop(timeout=0.1)  # a daemon thread: it ends with the process
        feed.close()
    log.info("stopped")


if __name__ == "__main__":
    main()
