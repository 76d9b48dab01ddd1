"""What the SQLite feed keeps for each database it reads and each stream it follows.

A :class:`Database` is one SQLite file, opened once for every stream that reads it and reopened
(at most once a second) after an error, each problem logged once. The file at its path is checked
several times a second (device and inode): a database replaced (``mv`` of a new file over it) or
deleted is logged once and reopened when a file is there again; its streams re-install their
capture in it and read its changes from the first (:attr:`Database.replacements`). A :class:`Stream` is one
function's trigger on one table: the capture installed in that table (:mod:`sources.sqlite.sqlite_capture`,
re-installed when the schema changes), the cursor as last read or written
(:mod:`sources.sqlite.sqlite_cursor`), the batch in flight and those read ahead
(:mod:`sources.sqlite.sqlite_ahead`), and how far the table's change rows may be pruned.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker import results
from broker.errors import ChangeFeedError
from broker.registry import Function, SqliteTrigger
from sources.sqlite import sqlite_capture

if TYPE_CHECKING:
    from sources.sqlite.sqlite_ahead import Ahead

log = logging.getLogger("lambdalite.sqlite")

PRUNE_DELAY = 5.0  # seconds a finished batch waits before its change rows are deleted
RETRY_DB_EVERY = 1.0  # seconds between attempts to open a database or find a table
CHECK_FILE_EVERY = 0.1  # seconds between two looks at which file the database's path names


@dataclass
class Database:
    """One SQLite file, opened once for all the streams that read it."""

    path: Path
    conn: sqlite3.Connection | None = None
    schema_version: int | None = None
    next_try: float = 0.0
    problem: str = ""
    file: str = ""  # "device:inode" of the file the connection reads ("" before the first open)
    replacements: int = 0  # how often another file was found at the path than the one read before
    next_check: float = 0.0

    def open(self, now: float) -> sqlite3.Connection | None:
        """The connection, (re)opening it at most once a second; None while it cannot be opened.
        A connection to a file that is no longer at the path is closed first (logged once)."""
        if self.conn is not None:
            if now < self.next_check:
                return self.conn
            self.next_check = now + CHECK_FILE_EVERY
            if self._still_there():
                return self.conn
            self._let_go(self.conn)
            self.conn, self.next_try = None, 0.0
        if now < self.next_try:
            return None
        self.next_try = now + RETRY_DB_EVERY
        try:
            conn = sqlite_capture.connect(self.path)
        except ChangeFeedError as e:
            if self.file and not self.path.exists():  # deleted: said once, in _still_there's words
                self.complain(f"{self.path}: the database file was deleted; waiting for a new one there")
            else:
                self.complain(str(e) + "; retrying every second")
            return None
        try:
            st = os.stat(self.path)
        except OSError as e:
            conn.close()
            self.complain(f"{self.path}: {e.strerror or e}; retrying every second")
            return None
        file = f"{st.st_dev}:{st.st_ino}"
        if self.file and file != self.file:
            self.replacements += 1
            log.warning("%s: another database file is there now (device:inode %s, was %s); reading it, with "
                        "the capture re-installed, from its first change", self.path, file, self.file)
            self.problem = ""
        self.conn, self.file, self.next_check = conn, file, now + CHECK_FILE_EVERY
        self.schema_version = None
        if self.problem:
            log.info("%s: opened", self.path)
            self.problem = ""
        return self.conn

    def _let_go(self, conn: sqlite3.Connection) -> None:
        """Close the connection to a file that is no longer at the path.

        SQLite neither checkpoints nor removes ``-wal`` at the close of a file renamed over or
        deleted, and the next database opened at the path would take that write-ahead log for its
        own (the old file's rows showing up in the new one). Checkpointed into the old file and
        truncated first, the log is empty: the new database is read as it is."""
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as e:
            log.warning("%s: the write-ahead log of the file that was there could not be emptied (%s); a "
                        "database opened at the path may take it for its own", self.path, e)
        conn.close()
        self.conn = None

    def _still_there(self) -> bool:
        """Whether the path still names the file the connection reads; logs a change once."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.complain(f"{self.path}: the database file was deleted; waiting for a new one there")
            return False
        except OSError:
            return True  # cannot tell (a permission changed): keep reading what is open
        return f"{st.st_dev}:{st.st_ino}" == self.file

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
    replacements: int = 0  # the database's replacements this stream has caught up with
    replaced: bool = False  # the database was replaced: the cursor starts again once nothing is in flight

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
        if self.replacements != db.replacements:  # another file: its capture, and its changes from the first
            self.replacements, self.replaced = db.replacements, True
            self.shape = self.seen_schema = None
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
