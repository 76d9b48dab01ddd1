"""SQLite batches never pass Lambda's 6 MB payload limit; a record too large alone is dead-lettered
alone and the stream goes on."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import redis
from sqlite_support import app_db, finish, make_project, queued_events

from broker import deadletter
from broker.connection import connect
from sources.sqlite import sqlite_batch
from sources.sqlite.sqlite import Feed

MB = 1 << 20


def payload_bytes(event: dict) -> int:
    return len(json.dumps(event["payload"], separators=(",", ":"), ensure_ascii=False).encode())


def deliver_all(feed: Feed, r: redis.Redis, want: int, timeout: float = 30.0) -> list[dict]:
    """Step the feed, finishing each batch as a worker would, until ``want`` records came."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while sum(len(e["payload"]["Records"]) for e in events) < want:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(events)} batches came")
        feed.step()
        for event in queued_events(r):
            events.append(event)
            finish(r, event["id"], release=False)
        time.sleep(0.01)
    return events


def test_large_rows_in_one_transaction_go_in_batches_under_6_mb(project: Path, r: redis.Redis, redis_url: str) -> None:
    registry = make_project(project, batch_size=100)
    app = app_db(project / "app.db", "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, n)")
    feed = Feed(registry, connect(redis_url))
    feed.step()
    blobs = [os.urandom(2 * MB) for _ in range(5)]
    with app:
        app.execute("BEGIN")
        app.executemany("INSERT INTO items(name, n) VALUES (?, ?)", [(f"big{i}", b) for i, b in enumerate(blobs)])
        app.execute("INSERT INTO items(name, n) VALUES ('small', 1)")
        app.execute("COMMIT")
    events = deliver_all(feed, r, 6)
    assert len(events) > 1
    assert all(payload_bytes(e) <= sqlite_batch.PAYLOAD_MAX for e in events)
    got = [rec["dynamodb"]["NewImage"]["name"]["S"] for e in events for rec in e["payload"]["Records"]]
    assert got == ["big0", "big1", "big2", "big3", "big4", "small"]  # all of them, in order, once
    import base64

    assert base64.b64decode(events[0]["payload"]["Records"][0]["dynamodb"]["NewImage"]["n"]["B"]) == blobs[0]
    assert deadletter.entries(r, "feed") == []
    feed.close()
    app.close()


@pytest.mark.parametrize("read_ahead", [False, True])
def test_a_record_too_large_alone_is_dead_lettered_alone(
    project: Path, r: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture, read_ahead: bool,
) -> None:
    registry = make_project(project, batch_size=2)
    app = app_db(project / "app.db", "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, n)")
    feed = Feed(registry, connect(redis_url))
    feed.step()
    rows = [("a", 1), ("b", 2), ("huge", os.urandom(5 * MB)), ("c", 3), ("d", 4)]
    if read_ahead:  # the huge one in the batch read ahead while the first is in flight
        app.executemany("INSERT INTO items(name, n) VALUES (?, ?)", rows)
    else:
        for row in rows:
            app.execute("INSERT INTO items(name, n) VALUES (?, ?)", row)
    with caplog.at_level("ERROR", logger="lambdalite.sqlite"):
        events = deliver_all(feed, r, 4)
    got = [rec["dynamodb"]["NewImage"]["name"]["S"] for e in events for rec in e["payload"]["Records"]]
    assert got == ["a", "b", "c", "d"]
    (dead,) = deadletter.entries(r, "feed")
    assert dead["error"]["errorType"] == "RequestEntityTooLargeException"
    assert "6291456 bytes" in dead["error"]["errorMessage"]
    (record,) = dead["event"]["payload"]["Records"]
    assert record["dynamodb"]["NewImage"]["name"] == {"S": "huge"} and int(record["dynamodb"]["SequenceNumber"]) == 3
    said = [rec.getMessage() for rec in caplog.records if "RequestEntityTooLargeException" in rec.getMessage()]
    assert len(said) == 1 and "\n" not in said[0]
    feed.close()
    app.close()


def test_fit_cuts_where_the_next_record_would_pass_the_limit() -> None:
    records = [{"dynamodb": {"SequenceNumber": str(i).zfill(21)}, "x": "é" * 40} for i in range(1, 6)]
    one = len(json.dumps(records[0], separators=(",", ":"), ensure_ascii=False).encode())
    limit = len('{"Records": []}') + 2 * one + 1  # exactly two records and their comma
    got = sqlite_batch.fit(records, 9, limit)
    assert got.records == records[:2] and got.last == 2 and got.too_large is None
    assert json.loads(got.text) == records[:2] and len(('{"Records": ' + got.text + "}").encode()) == limit
    assert sqlite_batch.fit(records, 9, limit + 10_000).last == 9
    alone = sqlite_batch.fit(records, 9, one)
    assert alone.records == [] and alone.too_large is records[0] and alone.last == 1
