"""What the SQLite feed keeps for each database it reads and each stream it follows.

A :class:`Database` is one SQLite file, opened once for every stream that reads it and reopened
(at most once a second) after an error, each problem logged once. A :class:`Stream` is one
function's trigger on one table: the capture installed in that table (:mod:`sources.sqlite_capture`,
re-installed when the schema changes), the cursor as last read or written
(:mod:`sources.sqlite_cursor`), the batch in flight and those read ahead
(:mod:`sources.sqlite_ahead`), and how far the table's change rows may be pruned.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker import results
from broker.errors import ChangeFeedError
from broker.registry import Function, SqliteTrigger
from sources import sqlite_capture

if TYPE_CHECKING:
    from sources.sqlite_ahead import Ahead

log = logging.getLogger("lambdalite.sqlite")

PRUNE_DELAY = 5.0  # seconds a finished batch waits before its change rows are deleted
RETRY_DB_EVERY = 1.0  # seconds between attempts to open a database or find a table


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

    def capture(self, now: float) -> sqlite3.Connection | None:
        """The connection to read the table's changes from, with the capture installed (and re-installed
        after a schema change); None while the database cannot be opened, the table is missing or the
        capture cannot be installed."""
        db = self.db
        conn = db.open(now)
        if conn is None:
            return None
        try:
            version = conn.execute("PRAGMA schema_version").fetchone()[0]
            if self.shape is not None and version == self.seen_schema:
                return conn
            if self.shape is None and version == self.seen_schema and now < self.next_check:
                return None
            self.seen_schema = version
            self.next_check = now + RETRY_DB_EVERY
            self.shape = sqlite_capture.ensure(conn, self.table)
            if self.shape is None:
                if not self.waiting_said:
                    log.warning("%s: no table %r yet; waiting for it", db.path, self.table)
                    self.waiting_said = True
                return None
            self.seen_schema = conn.execute("PRAGMA schema_version").fetchone()[0]
            self.waiting_said = False
            return conn
        except ChangeFeedError as e:
            self.shape = None
            db.complain(f"{db.path}: {e}")
            return None
        except sqlite3.Error as e:
            self.shape = None
            db.fail(e)
            return None
