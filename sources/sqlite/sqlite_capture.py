"""Capturing every committed row change of a SQLite table, from any process, with triggers.

SQLite's ``update_hook`` and session extension see one connection only; triggers run inside the
writer's own transaction, whoever the writer is, so a change and its record commit (or roll back)
together. For each captured table this module installs, in one short write transaction:

* ``AFTER INSERT`` / ``AFTER UPDATE`` / ``AFTER DELETE`` triggers that append one row per change
  to ``_lambdalite_changes`` (``id INTEGER PRIMARY KEY AUTOINCREMENT``, so an id never comes
  back after pruning): table, operation, key and old/new row as JSON, and the time.
* ``BEFORE INSERT`` / ``BEFORE UPDATE`` triggers for ``REPLACE``. SQLite deletes the rows that
  a ``REPLACE`` (or ``UPDATE OR REPLACE``) conflicts with without firing DELETE triggers (unless
  the writer turned ``recursive_triggers`` on), so the AFTER triggers alone would never learn that
  an old row existed. The BEFORE trigger stashes every row the new one conflicts with (on the key
  or a UNIQUE index) as a ``STASH`` change; the AFTER trigger turns the stashed rows that really
  disappeared into ``REPLACED`` changes and drops the rest. The feed reports a replaced row with
  the same key as the new one as a MODIFY (old and new image, what happened to that key) and one
  with another key as a REMOVE. A ``STASH`` row left behind by a statement that then did nothing
  (``INSERT OR IGNORE``, an upsert that took its ``DO UPDATE`` path) is ignored and pruned.

An UPDATE that changes the key is recorded as a REMOVE of the old key and an INSERT of the new one,
as DynamoDB keys cannot change. The key is the table's PRIMARY KEY (an ``INTEGER PRIMARY KEY``, a
composite or a text key, with or without ROWID); a table without one is keyed by ``rowid``.

Values are encoded so that every SQLite value fits JSON exactly (see :mod:`sources.sqlite.dynamodb`).

The installed triggers carry a fingerprint of the table's columns, key and UNIQUE indexes; when
the schema changes (``ALTER TABLE ... ADD COLUMN``, a new UNIQUE index) the feed notices the new
``schema_version`` and re-installs them. Changes made between the ALTER and that re-install (one
poll interval) carry the old column set. A column referenced by the triggers cannot be dropped
with ``ALTER TABLE ... DROP COLUMN`` while they are installed (SQLite refuses); see the README.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.errors import ChangeFeedError

log = logging.getLogger(__name__)

CHANGES = "_lambdalite_changes"
STATE = "_lambdalite_capture"
CAPTURE_VERSION = 2  # bump when the generated SQL changes: every table is re-installed
PREFIX = "_lambdalite_"
BUSY_TIMEOUT = 5.0  # seconds the feed waits for the write lock when installing triggers
_REAL_MAX = "1.7976931348623157e308"


def quote(name: str) -> str:
    """An SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """An SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class TableShape:
    """What the triggers need to know about a table."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]  # ("rowid",) for a table without a PRIMARY KEY
    rowid: bool  # False for WITHOUT ROWID tables
    uniques: tuple[tuple[str, ...], ...]  # the column sets of UNIQUE indexes (partial ones excluded)
    rowid_alias: bool = False  # the key is one INTEGER PRIMARY KEY column, i.e. the rowid itself

    @property
    def fingerprint(self) -> str:
        shape = [self.columns, self.key, self.rowid, self.uniques, self.rowid_alias]
        text = json.dumps([CAPTURE_VERSION, shape])
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def connect(path: Path) -> sqlite3.Connection:
    """Open an existing database for the feed; never creates one.

    Raises :class:`ChangeFeedError` for a missing file or one that is not a SQLite database.
    """
    if not path.is_file():
        raise ChangeFeedError(f"{path}: no such database file")
    try:
        with path.open("rb") as f:
            header = f.read(16)
    except OSError as e:
        raise ChangeFeedError(f"{path}: cannot read: {e}") from e
    if header and header != b"SQLite format 3\x00":
        raise ChangeFeedError(f"{path}: not a SQLite database")
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None,
            timeout=BUSY_TIMEOUT, check_same_thread=False,
        )
        conn.text_factory = _text
        conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as e:
        raise ChangeFeedError(f"{path}: cannot open as SQLite: {e}") from e
    return conn


def _text(raw: bytes) -> str:
    # A TEXT value that is not UTF-8 (SQLite does not check) must not stop the feed.
    return raw.decode("utf-8", "replace")


def describe(conn: sqlite3.Connection, table: str) -> TableShape | None:
    """The shape of ``table``, or None when it does not exist (yet)."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
    if row is None:
        return None
    info = conn.execute(f"PRAGMA table_info({quote(table)})").fetchall()
    columns = tuple(r[1] for r in info)
    pk = tuple(r[1] for r in sorted((r for r in info if r[5] > 0), key=lambda r: r[5]))
    try:
        conn.execute(f"SELECT rowid FROM {quote(table)} LIMIT 0")
        rowid = True
    except sqlite3.OperationalError:
        rowid = False
    key = pk or ("rowid",)
    uniques = []
    for _seq, index, unique, _origin, partial in conn.execute(f"PRAGMA index_list({quote(table)})"):
        if not unique or partial:
            continue
        cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({quote(index)})"))
        if None in cols or cols == pk:  # an expression index; or the key itself, checked anyway
            continue
        uniques.append(cols)
    types = {r[1]: str(r[2]).upper() for r in info}
    alias = rowid and len(pk) == 1 and types[pk[0]] == "INTEGER"
    return TableShape(table, columns, key, rowid, tuple(sorted(uniques)), alias)


def _value(expr: str) -> str:
    """SQL turning one value into its exact JSON-safe encoding (see sources.sqlite.dynamodb).

    A REAL is printed with 18 significant digits: SQLite before 3.43 does not round its 17th digit
    correctly (1.7976931348623157e308 printed with 17 reads back as 1.7976931348623155e308); the
    18th makes up for that, and the reader rounds to the nearest double.
    """
    printed = f"printf('%!.18g', {expr})"
    return (
        f"CASE typeof({expr}) "
        f"WHEN 'real' THEN CASE WHEN abs({expr}) <= {_REAL_MAX} THEN json({printed}) "
        f"ELSE json_array('R', {printed}) END "
        f"WHEN 'blob' THEN json_array('B', hex({expr})) "
        f"ELSE {expr} END"
    )


def _object(alias: str, columns: tuple[str, ...]) -> str:
    parts = ", ".join(f"{literal(c)}, {_value(f'{alias}.{quote(c)}' if c != 'rowid' else f'{alias}.rowid')}"
                      for c in columns)
    return f"json_object({parts})"


def _same(left: str, right: str, columns: tuple[str, ...], op: str = "=") -> str:
    def ref(alias: str, c: str) -> str:
        return f"{alias}.rowid" if c == "rowid" else f"{alias}.{quote(c)}"
    return " AND ".join(f"{ref(left, c)} {op} {ref(right, c)}" for c in columns)


def trigger_sql(shape: TableShape) -> list[str]:
    """The CREATE TRIGGER statements for one table."""
    t, qt = shape.name, quote(shape.name)
    lt = literal(t)
    now = "(julianday('now') - 2440587.5) * 86400.0"
    key_new, key_old = _object("NEW", shape.key), _object("OLD", shape.key)
    row_new, row_old = _object("NEW", shape.columns), _object("OLD", shape.columns)
    conflict_sets = [shape.key, *shape.uniques]
    if shape.rowid and shape.key != ("rowid",) and not shape.rowid_alias:
        conflict_sets.append(("rowid",))  # an INSERT that names the rowid can conflict on it too
    conflicts = " OR ".join(f"({_same('r', 'NEW', cols)})" for cols in conflict_sets)
    self_row = "r.rowid IS NOT OLD.rowid" if shape.rowid else f"NOT ({_same('r', 'OLD', shape.key)})"
    rid = "r.rowid" if shape.rowid else "NULL"
    if shape.rowid:
        gone = f"NOT EXISTS (SELECT 1 FROM {qt} AS r WHERE r.rowid = {CHANGES}.rid)"
    else:
        match = " AND ".join(
            f"r.{quote(k)} = json_extract({CHANGES}.key, {literal('$.' + json.dumps(k))})" for k in shape.key
        )
        gone = f"NOT EXISTS (SELECT 1 FROM {qt} AS r WHERE {match})"
    stash = (
        f"DELETE FROM {CHANGES} WHERE op = 'STASH' AND tbl = {lt}; "
        f"INSERT INTO {CHANGES}(tbl, op, key, old, rid, at) "
        f"SELECT {lt}, 'STASH', {_object('r', shape.key)}, {_object('r', shape.columns)}, {rid}, {now} "
        f"FROM {qt} AS r WHERE ({conflicts})"
    )

    def settle(same_key_counts: bool) -> str:
        replaced = f"({CHANGES}.key = {key_new} OR {gone})" if same_key_counts else gone
        return (
            f"UPDATE {CHANGES} SET op = 'REPLACED' WHERE op = 'STASH' AND tbl = {lt} AND {replaced}; "
            f"DELETE FROM {CHANGES} WHERE op = 'STASH' AND tbl = {lt};"
        )

    ins = f"INSERT INTO {CHANGES}(tbl, op, key, old, new, at) VALUES "
    key_kept = " AND ".join(
        f"NEW.{'rowid' if c == 'rowid' else quote(c)} IS OLD.{'rowid' if c == 'rowid' else quote(c)}"
        for c in shape.key
    )
    name = quote
    return [
        f"CREATE TRIGGER {name(PREFIX + t + '_bi')} BEFORE INSERT ON {qt} BEGIN {stash}; END",
        f"CREATE TRIGGER {name(PREFIX + t + '_ai')} AFTER INSERT ON {qt} BEGIN {settle(True)} "
        f"{ins}({lt}, 'INSERT', {key_new}, NULL, {row_new}, {now}); END",
        f"CREATE TRIGGER {name(PREFIX + t + '_bu')} BEFORE UPDATE ON {qt} BEGIN "
        f"{stash} AND {self_row}; END",
        f"CREATE TRIGGER {name(PREFIX + t + '_au')} AFTER UPDATE ON {qt} WHEN {key_kept} BEGIN "
        f"{settle(False)} {ins}({lt}, 'MODIFY', {key_new}, {row_old}, {row_new}, {now}); END",
        f"CREATE TRIGGER {name(PREFIX + t + '_ak')} AFTER UPDATE ON {qt} WHEN NOT ({key_kept}) BEGIN "
        f"{settle(True)} {ins}({lt}, 'REMOVE', {key_old}, {row_old}, NULL, {now}); "
        f"{ins}({lt}, 'INSERT', {key_new}, NULL, {row_new}, {now}); END",
        # With recursive_triggers on, a REPLACE fires this for the row it deletes: the REMOVE is
        # recorded here, so the stashed copy of that row is dropped.
        f"CREATE TRIGGER {name(PREFIX + t + '_ad')} AFTER DELETE ON {qt} BEGIN "
        f"DELETE FROM {CHANGES} WHERE op = 'STASH' AND tbl = {lt} AND key = {key_old}; "
        f"{ins}({lt}, 'REMOVE', {key_old}, {row_old}, NULL, {now}); END",
    ]


TRIGGER_SUFFIXES = ("_bi", "_ai", "_bu", "_au", "_ak", "_ad")


def _schema(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {CHANGES} ("
        "id INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, op TEXT NOT NULL, "
        "key TEXT NOT NULL, old TEXT, new TEXT, rid INTEGER, at REAL NOT NULL)"
    )
    conn.execute(f"CREATE INDEX IF NOT EXISTS {CHANGES}_stash ON {CHANGES}(tbl) WHERE op = 'STASH'")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {STATE} (tbl TEXT PRIMARY KEY, fingerprint TEXT NOT NULL)")


def installed_fingerprint(conn: sqlite3.Connection, table: str) -> str | None:
    """The fingerprint of the triggers installed on ``table``, or None."""
    try:
        row = conn.execute(f"SELECT fingerprint FROM {STATE} WHERE tbl = ?", (table,)).fetchone()
    except sqlite3.OperationalError:
        return None  # no state table yet
    return row[0] if row else None


def ensure(conn: sqlite3.Connection, table: str) -> TableShape | None:
    """Install (or re-install after a schema change) the capture triggers on ``table``.

    Idempotent and atomic: the triggers are replaced in one ``BEGIN IMMEDIATE`` transaction, so
    no write of any process falls between old and new triggers. Returns the table's shape, or None
    when the table does not exist. Raises :class:`ChangeFeedError` when the database cannot be
    written (locked for longer than the busy timeout, read-only, corrupt).
    """
    try:
        shape = describe(conn, table)
        if shape is None:
            return None
        if installed_fingerprint(conn, table) == shape.fingerprint:
            return shape
        conn.execute("BEGIN IMMEDIATE")
        try:
            shape = describe(conn, table)  # again, under the write lock
            if shape is None:
                conn.execute("ROLLBACK")
                return None
            _schema(conn)
            for suffix in TRIGGER_SUFFIXES:
                conn.execute(f"DROP TRIGGER IF EXISTS {quote(PREFIX + table + suffix)}")
            for sql in trigger_sql(shape):
                conn.execute(sql)
            conn.execute(f"INSERT OR REPLACE INTO {STATE}(tbl, fingerprint) VALUES (?, ?)",
                         (table, shape.fingerprint))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        raise ChangeFeedError(f"cannot install capture triggers on table {table!r}: {e}") from e
    log.info("capturing changes of table %r (columns %s, key %s)", table, ", ".join(shape.columns),
             ", ".join(shape.key))
    return shape


def uninstall(conn: sqlite3.Connection, table: str) -> None:
    """Drop the capture triggers of ``table`` (its recorded changes stay until pruned)."""
    conn.execute("BEGIN IMMEDIATE")
    for suffix in TRIGGER_SUFFIXES:
        conn.execute(f"DROP TRIGGER IF EXISTS {quote(PREFIX + table + suffix)}")
    conn.execute(f"DELETE FROM {STATE} WHERE tbl = ?", (table,))
    conn.execute("COMMIT")


@dataclass(frozen=True)
class Change:
    """One row change as the feed reports it (REPLACE already resolved)."""

    id: int
    event_name: str  # INSERT, MODIFY or REMOVE
    keys: dict[str, Any]
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    at: float


# json.loads without its checks around, for what the triggers write (an attribute typeshed omits)
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _load(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        try:
            value, end = _scan(text, 0) if type(text) is str else (None, -1)
        except StopIteration:
            end = -1
        if end != len(text):  # not one bare JSON text value: json.loads says what it is, or reads it
            value = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _when(at: Any) -> float:
    """The change's time, seconds since the epoch; ValueError for anything the triggers never write."""
    if type(at) not in (int, float) or not math.isfinite(at):
        raise ValueError(f"bad time {at!r:.40}")
    return float(at)


def read_changes(conn: sqlite3.Connection, table: str, after: int,
                 limit: int) -> tuple[list[Change], int, bool]:
    """Up to ``limit`` changes of ``table`` with ids above ``after``, oldest first.

    Returns the changes, the id of the last change-table row they account for (the cursor to
    read from next time) and whether they are full (the next change would not fit in ``limit``,
    so reading again later cannot give more). ``REPLACED`` rows are merged with the change that
    follows them in the same statement: the same key becomes a MODIFY with the replaced row as old
    image, another key a REMOVE of that key. A group is never split between two reads. An
    unreadable change row (written by something other than the triggers) is logged and skipped.
    """
    rows = conn.execute(
        f"SELECT id, op, key, old, new, at FROM {CHANGES} "
        "WHERE id > ? AND tbl = ? AND op <> 'STASH' ORDER BY id LIMIT ?",
        (after, table, limit + 64),
    )
    try:  # row by row: the rows after the last one used are never fetched
        return _group(rows, table, after, limit)
    finally:
        rows.close()


def _group(rows: Iterable[tuple[Any, ...]], table: str, after: int, limit: int) -> tuple[list[Change], int, bool]:
    out: list[Change] = []
    pending: list[tuple[int, dict[str, Any], dict[str, Any] | None, float]] = []
    consumed = after
    for change_id, op, key_text, old_text, new_text, at in rows:
        try:
            keys, old, new = _load(key_text), _load(old_text), _load(new_text)
            if keys is None or op not in ("INSERT", "MODIFY", "REMOVE", "REPLACED"):
                raise ValueError(f"unknown operation {op!r:.40}")
            at = _when(at)
        except ValueError as e:
            log.error("change %d of table %r is unreadable (%s); skipped", change_id, table, e)
            if not pending:
                consumed = change_id
            continue
        if op == "REPLACED":
            pending.append((change_id, keys, old, at))
            continue
        if out and len(out) + len(pending) + 1 > limit:
            return out, consumed, True
        for stash_id, stash_keys, stash_old, stash_at in pending:
            if op == "INSERT" and stash_keys == keys:
                op, old = "MODIFY", stash_old
            else:
                out.append(Change(stash_id, "REMOVE", stash_keys, stash_old, None, stash_at))
        pending = []
        out.append(Change(change_id, op, keys, old, new, at))
        consumed = change_id
    return out, consumed, len(out) >= limit


def prune(conn: sqlite3.Connection, table: str, upto: int, batch: int = 500) -> int:
    """Delete up to ``batch`` change rows of ``table`` with ids up to ``upto``; returns how many.

    One short write transaction with a short busy timeout: when an application holds the write
    lock, the feed gives way (raises ``sqlite3.OperationalError``) and prunes later.
    """
    conn.execute("PRAGMA busy_timeout = 100")
    try:
        cursor = conn.execute(
            f"DELETE FROM {CHANGES} WHERE id IN "
            f"(SELECT id FROM {CHANGES} WHERE id <= ? AND tbl = ? ORDER BY id LIMIT ?)",
            (upto, table, batch),
        )
        return cursor.rowcount
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
