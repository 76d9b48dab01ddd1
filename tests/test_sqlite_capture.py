"""Capture triggers on real SQLite files: every kind of key, REPLACE and upsert, values, schema changes."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from sources.sqlite import dynamodb, sqlite_capture
from sources.sqlite.sqlite_capture import read_changes


def setup(tmp_path: Path, schema: str, journal: str = "wal") -> tuple[sqlite3.Connection, sqlite3.Connection]:
    path = tmp_path / "app.db"
    app = sqlite3.connect(path, isolation_level=None)
    app.execute(f"PRAGMA journal_mode={journal}")
    app.executescript(schema)
    feed = sqlite_capture.connect(path)
    assert sqlite_capture.ensure(feed, "t") is not None
    return app, feed


def changes(feed: sqlite3.Connection) -> list[tuple[str, dict, dict | None, dict | None]]:
    got, _, _ = read_changes(feed, "t", 0, 1000)
    return [(c.event_name, c.keys, c.old, c.new) for c in got]


@pytest.mark.parametrize(
    ("schema", "insert", "keys"),
    [
        ("CREATE TABLE t(id INTEGER PRIMARY KEY, v)", "INSERT INTO t(v) VALUES ('x')", {"id": 1}),
        ("CREATE TABLE t(a TEXT, b INT, v, PRIMARY KEY (a, b))", "INSERT INTO t VALUES ('k', 2, 'x')",
         {"a": "k", "b": 2}),
        ("CREATE TABLE t(name TEXT PRIMARY KEY, v)", "INSERT INTO t VALUES ('k', 'x')", {"name": "k"}),
        ("CREATE TABLE t(name TEXT PRIMARY KEY, v) WITHOUT ROWID", "INSERT INTO t VALUES ('k', 'x')",
         {"name": "k"}),
        ("CREATE TABLE t(v)", "INSERT INTO t VALUES ('x')", {"rowid": 1}),
    ],
    ids=["integer-pk", "composite", "text-pk", "without-rowid", "plain-rowid"],
)
@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_every_kind_of_key(tmp_path: Path, schema: str, insert: str, keys: dict, journal: str) -> None:
    app, feed = setup(tmp_path, schema, journal)
    app.execute(insert)
    app.execute("UPDATE t SET v = 'y'")
    app.execute("DELETE FROM t")
    got = changes(feed)
    assert [(name, k) for name, k, _o, _n in got] == [("INSERT", keys), ("MODIFY", keys), ("REMOVE", keys)]
    assert got[0][3]["v"] == "x" and got[0][2] is None
    assert got[1][2]["v"] == "x" and got[1][3]["v"] == "y"
    assert got[2][2]["v"] == "y" and got[2][3] is None


def test_a_rolled_back_transaction_leaves_no_change(tmp_path: Path) -> None:
    app, feed = setup(tmp_path, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    app.execute("BEGIN")
    app.execute("INSERT INTO t VALUES (1, 'x')")
    app.execute("ROLLBACK")
    app.execute("INSERT INTO t VALUES (2, 'y')")
    assert [c[1] for c in changes(feed)] == [{"id": 2}]


SCHEMA = "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT UNIQUE, v)"


def test_replace_of_an_existing_key_is_a_modify_with_the_old_image(tmp_path: Path) -> None:
    app, feed = setup(tmp_path, SCHEMA)
    app.execute("INSERT INTO t VALUES (1, 'a', 1)")
    app.execute("REPLACE INTO t VALUES (1, 'a', 2)")
    app.execute("INSERT OR REPLACE INTO t VALUES (3, 'c', 3)")  # a new key: a plain INSERT
    assert changes(feed) == [
        ("INSERT", {"id": 1}, None, {"id": 1, "email": "a", "v": 1}),
        ("MODIFY", {"id": 1}, {"id": 1, "email": "a", "v": 1}, {"id": 1, "email": "a", "v": 2}),
        ("INSERT", {"id": 3}, None, {"id": 3, "email": "c", "v": 3}),
    ]


def test_replace_that_removes_another_row_through_a_unique_index(tmp_path: Path) -> None:
    app, feed = setup(tmp_path, SCHEMA)
    app.execute("INSERT INTO t VALUES (1, 'a', 1)")
    app.execute("INSERT INTO t VALUES (2, 'b', 2)")
    app.execute("REPLACE INTO t VALUES (2, 'a', 9)")  # deletes row 1 (email) and replaces row 2
    assert [(n, k) for n, k, _o, _new in changes(feed)] == [
        ("INSERT", {"id": 1}), ("INSERT", {"id": 2}), ("REMOVE", {"id": 1}), ("MODIFY", {"id": 2}),
    ]
    assert app.execute("SELECT id FROM t").fetchall() == [(2,)]


def test_update_or_replace_that_removes_another_row(tmp_path: Path) -> None:
    app, feed = setup(tmp_path, SCHEMA)
    app.executemany("INSERT INTO t VALUES (?, ?, 0)", [(1, "a"), (2, "b")])
    app.execute("UPDATE OR REPLACE t SET email = 'a' WHERE id = 2")
    assert [(n, k) for n, k, _o, _new in changes(feed)][2:] == [("REMOVE", {"id": 1}), ("MODIFY", {"id": 2})]


def test_upsert_and_insert_or_ignore(tmp_path: Path) -> None:
    app, feed = setup(tmp_path, SCHEMA)
    app.execute("INSERT INTO t VALUES (1, 'a', 1)")
    app.execute("INSERT INTO t VALUES (1, 'a', 2) ON CONFLICT(id) DO UPDATE SET v = excluded.v")
    app.execute("INSERT OR IGNORE INTO t VALUES (1, 'zz', 3)")  # nothing happens
    app.execute("INSERT INTO t VALUES (1, 'a', 5) ON CONFLICT(id) DO NOTHING")
    app.execute("INSERT INTO t VALUES (4, 'd', 4)")
    app.execute("INSERT INTO t VALUES (4, 'd', 4) ON CONFLICT(id) DO UPDATE SET v = 7 WHERE 0")
    app.execute("INSERT INTO t VALUES (5, 'e', 5) ON CONFLICT(id) DO UPDATE SET v = 0")  # no conflict: insert
    assert changes(feed) == [
        ("INSERT", {"id": 1}, None, {"id": 1, "email": "a", "v": 1}),
        ("MODIFY", {"id": 1}, {"id": 1, "email": "a", "v": 1}, {"id": 1, "email": "a", "v": 2}),
        ("INSERT", {"id": 4}, None, {"id": 4, "email": "d", "v": 4}),
        ("INSERT", {"id": 5}, None, {"id": 5, "email": "e", "v": 5}),
    ]


def test_replace_with_recursive_triggers_on_is_remove_then_insert(tmp_path: Path) -> None:
    app, feed = setup(tmp_path, SCHEMA)
    app.execute("PRAGMA recursive_triggers = ON")
    app.execute("INSERT INTO t VALUES (1, 'a', 1)")
    app.execute("REPLACE INTO t VALUES (1, 'a', 2)")
    assert [(n, k) for n, k, _o, _new in changes(feed)] == [
        ("INSERT", {"id": 1}), ("REMOVE", {"id": 1}), ("INSERT", {"id": 1}),
    ]


def test_an_update_of_the_key_is_a_remove_and_an_insert(tmp_path: Path) -> None:
    app, feed = setup(tmp_path, "CREATE TABLE t(name TEXT PRIMARY KEY, v) WITHOUT ROWID")
    app.execute("INSERT INTO t VALUES ('a', 1)")
    app.execute("UPDATE t SET name = 'b'")
    app.execute("INSERT INTO t VALUES ('c', 1)")
    app.execute("REPLACE INTO t VALUES ('c', 2)")
    assert [(n, k) for n, k, _o, _new in changes(feed)] == [
        ("INSERT", {"name": "a"}), ("REMOVE", {"name": "a"}), ("INSERT", {"name": "b"}),
        ("INSERT", {"name": "c"}), ("MODIFY", {"name": "c"}),
    ]


def test_values_become_exact_typed_attributes(tmp_path: Path) -> None:
    app, feed = setup(tmp_path, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    values = [None, 2**63 - 1, -(2**63), 0.1 + 0.2, 1e308, 1.0, "héllo \u2603 \"q\"", b"\x00\xff\x10",
              math.inf, -math.inf, math.nan]
    app.executemany("INSERT INTO t(v) VALUES (?)", [(v,) for v in values])
    got = [dynamodb.attribute(c[3]["v"]) for c in changes(feed)]
    assert got == [
        {"NULL": True}, {"N": "9223372036854775807"}, {"N": "-9223372036854775808"},
        {"N": "0.30000000000000004"}, {"S": "1e+308"}, {"N": "1.0"}, {"S": "héllo \u2603 \"q\""},
        {"B": "AP8Q"}, {"N": "Infinity"}, {"N": "-Infinity"},
        {"NULL": True},  # SQLite stores NaN as NULL
    ]


def test_install_is_idempotent_and_follows_schema_changes(tmp_path: Path) -> None:
    app, feed = setup(tmp_path, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    triggers = "SELECT count(*) FROM sqlite_master WHERE type='trigger'"
    count = feed.execute(triggers).fetchone()[0]
    assert sqlite_capture.ensure(feed, "t").columns == ("id", "v")
    assert feed.execute(triggers).fetchone()[0] == count == len(sqlite_capture.TRIGGER_SUFFIXES)
    app.execute("ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'd'")
    assert sqlite_capture.ensure(feed, "t").columns == ("id", "v", "extra")
    app.execute("INSERT INTO t(v) VALUES (1)")
    assert changes(feed)[-1][3] == {"id": 1, "v": 1, "extra": "d"}
    assert feed.execute(triggers).fetchone()[0] == count


def test_changes_are_read_in_batches_without_splitting_a_replace(tmp_path: Path) -> None:
    app, feed = setup(tmp_path, SCHEMA)
    app.executemany("INSERT INTO t VALUES (?, ?, 0)", [(i, str(i)) for i in range(1, 4)])
    app.execute("REPLACE INTO t VALUES (3, '3', 1)")
    first, upto, full = read_changes(feed, "t", 0, 3)
    second, upto2, more = read_changes(feed, "t", upto, 3)
    assert [c.event_name for c in first] == ["INSERT"] * 3
    assert [c.event_name for c in second] == ["MODIFY"] and upto2 > upto
    assert full and not more, "full: the batch cannot grow; not full: a later read may give more"
    assert sqlite_capture.prune(feed, "t", upto) == 3
    assert [c.event_name for c in read_changes(feed, "t", 0, 10)[0]] == ["MODIFY"]
    app.execute("REPLACE INTO t VALUES (9, '1', 2)")  # takes email '1' from key 1: REMOVE 1 + INSERT 9
    third, _, full = read_changes(feed, "t", upto2, 1)
    assert [c.event_name for c in third] == ["REMOVE", "INSERT"] and full, "a group is never split"
    third, _, full = read_changes(feed, "t", 0, 2)
    assert [c.event_name for c in third] == ["MODIFY"] and full, "the next group would not fit"


def test_missing_and_not_sqlite_files(tmp_path: Path) -> None:
    from broker.errors import ChangeFeedError

    with pytest.raises(ChangeFeedError, match="no such database file"):
        sqlite_capture.connect(tmp_path / "nope.db")
    (tmp_path / "junk.db").write_bytes(b"this is not a database at all, not even close")
    with pytest.raises(ChangeFeedError, match="not a SQLite database"):
        sqlite_capture.connect(tmp_path / "junk.db")
    assert not (tmp_path / "nope.db").exists()


def test_reals_dynamodb_cannot_hold_are_strings_boto3_reads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from boto3.dynamodb.types import TypeDeserializer

    monkeypatch.setattr(dynamodb, "_warned_range", set())  # logged once per column: start afresh
    app, feed = setup(tmp_path, "CREATE TABLE t(id INTEGER PRIMARY KEY, v, w)")
    rows = [(1e300, 1.5), (5e-324, 2.5), (-1e300, 1e-130), (1e126, 1e-131)]
    app.executemany("INSERT INTO t(v, w) VALUES (?, ?)", rows)
    with caplog.at_level("WARNING", logger="sources.sqlite.dynamodb"):
        images = [dynamodb.image(c[3], "t") for c in changes(feed)]
    got = [(i["v"], i["w"]) for i in images]
    assert got == [
        ({"S": "1e+300"}, {"N": "1.5"}), ({"S": "5e-324"}, {"N": "2.5"}),
        ({"S": "-1e+300"}, {"N": "1e-130"}), ({"S": "1e+126"}, {"S": "1e-131"}),
    ]
    deserialize = TypeDeserializer()
    assert [float(deserialize.deserialize(v)) for v, _ in got] == [1e300, 5e-324, -1e300, 1e126]
    warned = [r.getMessage() for r in caplog.records if "outside DynamoDB's number range" in r.getMessage()]
    assert len(warned) == 2 and warned[0].startswith("t.v ") and warned[1].startswith("t.w ")  # once per column
