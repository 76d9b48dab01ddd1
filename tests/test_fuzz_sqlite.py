"""Fuzzing the SQLite change feed: every value SQLite can store becomes an exact DynamoDB typed
value, and no change row, however it got into the change table, stops the feed.

The oracle for the real round trips is SQLite itself: after each write the row is read back, and
the record must say exactly what the row holds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from boto3.dynamodb.types import TypeDeserializer
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_support import app_db, finish, make_project, queued_events

from broker.connection import connect
from broker.envelope import dump_json
from broker.errors import ChangeFeedError
from sources.sqlite import dynamodb, sqlite_capture
from sources.sqlite.sqlite import Feed, run
from sources.sqlite.sqlite_batch import first_failure

FUZZ = settings(max_examples=200, deadline=None)

INT64 = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([-(2**63), 2**63 - 1, -1, 0, 1, 2**53, 2**53 + 1])
REALS = st.floats() | st.sampled_from([
    -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308,
    1e23, 0.1, 9007199254740993.0, math.inf, -math.inf, math.nan,
])
TEXT = st.text(st.characters(blacklist_categories=("Cs",)))  # what sqlite3 can bind as TEXT
STORABLE = st.none() | INT64 | REALS | TEXT | st.binary(max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


DESERIALIZE = TypeDeserializer()


def in_range(number: float) -> bool:
    """Whether DynamoDB can hold ``number`` (its documented range, checked without our code)."""
    return Decimal("1e-130") <= abs(Decimal(repr(number))) < Decimal("1e126")


def check_typed(typed: dict[str, Any]) -> None:
    """One valid DynamoDB attribute value, as strict JSON."""
    dump_json(typed)
    ((kind, value),) = typed.items()
    assert kind in ("NULL", "BOOL", "N", "S", "B"), typed
    if kind == "N":  # what a handler parsing with boto3 does: never Overflow or Underflow
        DESERIALIZE.deserialize(typed)
    if kind == "N":
        assert value in ("Infinity", "-Infinity") or math.isfinite(float(value)), typed
        assert value not in ("nan", "NaN")
    elif kind == "B":
        base64.b64decode(value, validate=True)
    elif kind == "NULL":
        assert value is True


def expected(kind: str, raw: Any) -> dict[str, Any]:
    """The typed value for what SQLite holds: ``typeof(x)`` and ``x`` read with bytes for TEXT."""
    if kind == "null":
        return {"NULL": True}
    if kind == "integer":
        return {"N": str(raw)}
    if kind == "real":
        if math.isinf(raw):
            return {"N": "Infinity" if raw > 0 else "-Infinity"}
        # SQLite's printf (before 3.43) drops the sign of -0.0; DynamoDB numbers have no -0 either
        if raw == 0:
            return {"N": "0.0"}
        return {"N": repr(raw)} if in_range(raw) else {"S": repr(raw)}
    if kind == "text":  # SQLite does not check UTF-8; the feed decodes with replacement characters
        return {"S": raw.decode("utf-8", "replace")}
    return {"B": base64.b64encode(raw).decode()}


# -- the converter, at the function level -------------------------------------------------------------


@FUZZ
@given(STORABLE)
def test_every_storable_value_as_the_triggers_encode_it(value: Any) -> None:
    if isinstance(value, bytes):
        captured: Any = ["B", value.hex().upper()]
    elif isinstance(value, float) and math.isinf(value):
        captured = ["R", "Inf" if value > 0 else "-Inf"]
    elif isinstance(value, float) and math.isnan(value):
        captured = None  # SQLite stores NaN as NULL
    else:
        captured = value
    typed = dynamodb.attribute(json.loads(json.dumps(captured)), ("t", "c"))
    check_typed(typed)
    if isinstance(value, bytes):
        assert base64.b64decode(typed["B"]) == value
    elif isinstance(value, bool) or value is None or (isinstance(value, float) and math.isnan(value)):
        assert typed == {"NULL": True}
    elif isinstance(value, int):
        assert typed == {"N": str(value)} and int(typed["N"]) == value
    elif isinstance(value, float):
        kind = "N" if math.isinf(value) or value == 0 or in_range(value) else "S"
        assert float(typed[kind]) == value
        assert math.isinf(value) or typed[kind] == repr(value)  # shortest form
    else:
        assert typed == {"S": value}


@FUZZ
@given(json_values | st.lists(st.text(max_size=4) | json_values, min_size=2, max_size=2))
def test_anything_else_is_a_typed_value_or_a_change_feed_error(value: Any) -> None:
    try:
        typed = dynamodb.attribute(value, ("t", "c"))
    except ChangeFeedError as e:
        assert "t.c" in str(e)
        return
    check_typed(typed)


@FUZZ
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_a_row_is_an_item_or_a_change_feed_error(row: dict[str, Any]) -> None:
    try:
        item = dynamodb.image(row, "t")
    except ChangeFeedError:
        return
    assert set(item) == set(row)
    for typed in item.values():
        check_typed(typed)


@FUZZ
@given(st.dictionaries(st.text(max_size=8), STORABLE | st.booleans(), max_size=4),
       st.dictionaries(st.text(max_size=8), STORABLE, max_size=4) | st.none(),
       st.sampled_from(["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"]))
def test_size_bytes_is_the_length_of_the_compact_json_of_the_images(
        keys: dict[str, Any], row: dict[str, Any] | None, view: str) -> None:
    def captured(value: Any) -> Any:
        if isinstance(value, bytes):
            return ["B", value.hex().upper()]
        return None if isinstance(value, float) and math.isnan(value) else value

    keys, row = ({c: captured(v) for c, v in d.items()} if d is not None else None for d in (keys, row))
    body = dynamodb.record(change_id=1, event_name="MODIFY", keys=keys, old=row, new=row, created=1.0, view=view,
                           table="t", arn="arn")["dynamodb"]
    images = [body["Keys"], body.get("NewImage"), body.get("OldImage")]
    assert body["SizeBytes"] == len(json.dumps(images, separators=(",", ":")).encode())


@FUZZ
@given(json_values, st.integers(1, 5))
def test_any_batch_response_names_a_record_of_the_batch_or_none(result: Any, size: int) -> None:
    records = [{"dynamodb": {"SequenceNumber": dynamodb.sequence_number(i)}} for i in range(size)]
    first = first_failure(result, records)
    assert first is None or 0 <= first < size


@pytest.mark.parametrize("value", [math.nan, ["R", "nan"], ["R", "NaN"], ["B", "zz"], ["B", "é"], ["X", "1"],
                                   {"a": 1}, [1, 2]])
def test_what_the_triggers_never_write_is_a_clear_error(value: Any) -> None:
    with pytest.raises(ChangeFeedError, match=r"^t\.c: "):
        dynamodb.attribute(value, ("t", "c"))


# -- real SQLite: values in, records out ------------------------------------------------------------------


@pytest.fixture
def captured(tmp_path: Path) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    app = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    app.execute("PRAGMA journal_mode=wal")
    app.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b REAL, c TEXT, d INTEGER)")
    feed = sqlite_capture.connect(tmp_path / "app.db")
    assert sqlite_capture.ensure(feed, "t") is not None
    return app, feed


def test_real_round_trip_of_every_storable_value(captured: tuple[sqlite3.Connection, sqlite3.Connection]) -> None:
    """Hypothesis rows into a real table with the capture triggers, read back as DynamoDB records."""
    app, feed = captured
    cursor = [0]
    raw_text = st.binary(max_size=20).map(lambda b: ("text", b))  # TEXT that need not be UTF-8

    @settings(max_examples=250, deadline=None)
    @given(st.lists(STORABLE.map(lambda v: ("value", v)) | raw_text, min_size=4, max_size=4),
           st.lists(STORABLE, min_size=4, max_size=4))
    def one(first: list[tuple[str, Any]], second: list[Any]) -> None:
        params = [v for _, v in first]
        marks = ", ".join("CAST(? AS TEXT)" if how == "text" else "?" for how, _ in first)
        row_id = app.execute(f"INSERT INTO t(a, b, c, d) VALUES ({marks})", params).lastrowid
        held_first = held(app, row_id)
        app.execute("UPDATE t SET a = ?, b = ?, c = ?, d = ? WHERE id = ?", [*second, row_id])
        held_second = held(app, row_id)
        app.execute("DELETE FROM t WHERE id = ?", (row_id,))
        changes, cursor[0], _full = sqlite_capture.read_changes(feed, "t", cursor[0], 10)
        arn = dynamodb.stream_arn("/db", "t")
        records = [dynamodb.record(change_id=c.id, event_name=c.event_name, keys=c.keys, old=c.old, new=c.new,
                                   created=c.at, view="NEW_AND_OLD_IMAGES", table="t", arn=arn) for c in changes]
        dump_json({"Records": records})  # strict JSON: it can be published
        assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
        images = [records[0]["dynamodb"]["NewImage"], records[1]["dynamodb"]["OldImage"],
                  records[1]["dynamodb"]["NewImage"], records[2]["dynamodb"]["OldImage"]]
        for image, row in zip(images, [held_first, held_first, held_second, held_second], strict=True):
            signless = {c: {"N": "0.0"} if v == {"N": "-0.0"} else v for c, v in image.items()}
            assert signless == {"id": {"N": str(row_id)}, **{c: expected(*row[c]) for c in "abcd"}}
            for typed in image.values():
                check_typed(typed)

    one()


def held(app: sqlite3.Connection, row_id: int) -> dict[str, tuple[str, Any]]:
    """What the row holds, column by column: (typeof, value), TEXT as its raw bytes."""
    app.text_factory = bytes
    try:
        row = app.execute("SELECT typeof(a), a, typeof(b), b, typeof(c), c, typeof(d), d FROM t WHERE id = ?",
                          (row_id,)).fetchone()
    finally:
        app.text_factory = str
    return {c: (row[2 * i].decode(), row[2 * i + 1]) for i, c in enumerate("abcd")}


# -- the feed, against change rows from anywhere -------------------------------------------------------------

GARBAGE_JSON = (
    st.none() | json_values.map(json.dumps) | st.text(max_size=20) | st.binary(max_size=10)
    | st.dictionaries(st.sampled_from(["id", "name", "n"]), json_values, max_size=3).map(json.dumps)
    | st.just("[" * 5000 + "]" * 5000) | st.just('{"id": ' + "9" * 5000 + "}")
)
garbage_rows = st.tuples(
    st.sampled_from(["INSERT", "MODIFY", "REMOVE", "REPLACED", "STASH"]) | st.text(max_size=6),
    GARBAGE_JSON, GARBAGE_JSON, GARBAGE_JSON,
    st.floats() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5) | st.binary(max_size=5),
)


def test_the_feed_never_dies_of_a_change_row(project: Path, r: redis.Redis, redis_url: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Rows written into the change table by something other than the triggers, between real changes:
    every real change is still delivered, and the feed's step never raises."""
    caplog.set_level(logging.ERROR)
    feed = Feed(make_project(project, batch_size=1000), connect(redis_url))
    app = app_db(project / "app.db")
    feed.step()  # installs the capture triggers
    next_id = [1]

    @settings(max_examples=80, deadline=None)
    @given(st.lists(st.just(None) | garbage_rows, min_size=1, max_size=8))
    def one(writes: list[tuple[Any, ...] | None]) -> None:
        real = []
        for write in writes:
            if write is None:
                app.execute("INSERT INTO items VALUES (?, 'x', ?)", (next_id[0], next_id[0]))
                real.append(next_id[0])
                next_id[0] += 1
                continue
            with contextlib.suppress(sqlite3.IntegrityError):  # NOT NULL: SQLite refused it already
                app.execute("INSERT INTO _lambdalite_changes(tbl, op, key, old, new, at) "
                            "VALUES ('items', ?, ?, ?, ?, ?)", write)
        # A stray REPLACED row waits for the change after it: one more real change closes the group.
        app.execute("INSERT INTO items VALUES (?, 'last', 0)", (next_id[0],))
        real.append(next_id[0])
        next_id[0] += 1
        feed.step()
        events = queued_events(r)
        assert len(events) == 1, events
        records = events[0]["payload"]["Records"]
        dump_json(records)
        new_ids = [int(x["dynamodb"]["NewImage"]["id"]["N"]) for x in records
                   if x["eventName"] in ("INSERT", "MODIFY") and "id" in x["dynamodb"].get("NewImage", {})
                   and x["dynamodb"]["NewImage"]["id"].get("N", "").lstrip("-").isdigit()]
        assert [i for i in new_ids if i in real] == real
        finish(r, events[0]["id"])
        feed.step()  # settles the batch
        assert queued_events(r) == []

    one()
    assert "is unreadable" in caplog.text or "skipped" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_step_that_fails_unexpectedly_costs_one_step(project: Path, r: redis.Redis, redis_url: str,
                                                       caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The last line of defence of ``python -m sources.sqlite``: a bug is logged, the feed carries on."""
    feed = Feed(make_project(project), connect(redis_url), poll_interval=0.01)
    app = app_db(project / "app.db")
    feed.step()  # installs the capture triggers
    app.execute("INSERT INTO items VALUES (1, 'a', 1)")
    real_step, failures = feed.step, [2]

    def flaky_step() -> None:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("a bug")
        real_step()

    monkeypatch.setattr(feed, "step", flaky_step)
    slept: list[float] = []
    run(feed, lambda: bool(queued_events(r)), sleep=slept.append)
    feed.close()
    assert slept == [0.1, 0.2]
    assert caplog.text.count("sqlite step failed") == 2 and "RuntimeError: a bug" in caplog.text
    assert len(queued_events(r)) == 1
