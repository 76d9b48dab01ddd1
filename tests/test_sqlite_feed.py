"""The feed loop, driven one step at a time against real SQLite files and a real Redis."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis
from sqlite_support import app_db, finish, make_project, queued_events, records_of, summary

from broker.connection import connect
from broker.redis_server.embedded import RedisServer
from sources.sqlite import sqlite_capture
from sources.sqlite.sqlite import Feed
from sources.sqlite.sqlite_cursor import cursor_key


def feed_for(registry, url: str, clock=time.time) -> Feed:  # noqa: ANN001
    return Feed(registry, connect(url), poll_interval=0.01, clock=clock)


def test_batches_in_order_one_in_flight(project: Path, r: redis.Redis, redis_url: str) -> None:
    registry = make_project(project, batch_size=3)
    app = app_db(project / "app.db")
    feed = feed_for(registry, redis_url)
    feed.step()  # installs the triggers
    app.executemany("INSERT INTO items(name, n) VALUES (?, ?)", [(f"r{i}", i) for i in range(5)])
    app.execute("UPDATE items SET n = 99 WHERE id = 2")
    feed.step()
    feed.step()
    events = queued_events(r)
    assert len(events) == 1, "a second batch must wait for the first one's outcome"
    first = events[0]
    assert first["source"] == "sqlite" and first["invocation_type"] == "Event"
    recs = first["payload"]["Records"]
    assert [x["dynamodb"]["NewImage"]["n"] for x in recs] == [{"N": "0"}, {"N": "1"}, {"N": "2"}]
    rec = recs[0]
    assert (rec["eventName"], rec["eventSource"], rec["eventVersion"]) == ("INSERT", "aws:dynamodb", "1.1")
    assert rec["dynamodb"]["Keys"] == {"id": {"N": "1"}}
    assert rec["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES" and "OldImage" not in rec["dynamodb"]
    assert rec["dynamodb"]["SizeBytes"] > 0 and rec["eventSourceARN"].startswith("arn:aws:dynamodb:")
    seqs = [x["dynamodb"]["SequenceNumber"] for x in recs]
    assert seqs == sorted(seqs) and len(set(map(len, seqs))) == 1
    assert int(r.hget(cursor_key("feed", (project / "app.db").resolve(), "items"), "last")) == int(seqs[-1])

    finish(r, first["id"])
    feed.step()
    events = queued_events(r)
    assert len(events) == 1 and events[0]["id"] != first["id"]
    assert summary(events[0]["payload"]["Records"]) == [
        ("INSERT", '{"id": {"N": "4"}}'), ("INSERT", '{"id": {"N": "5"}}'), ("MODIFY", '{"id": {"N": "2"}}'),
    ]
    modify = events[0]["payload"]["Records"][2]["dynamodb"]
    assert modify["OldImage"]["n"] == {"N": "1"} and modify["NewImage"]["n"] == {"N": "99"}
    assert all(
        int(a["dynamodb"]["SequenceNumber"]) < int(b["dynamodb"]["SequenceNumber"])
        for a, b in zip(recs, events[0]["payload"]["Records"], strict=False)
    )


@pytest.mark.parametrize(
    ("view", "present"),
    [("KEYS_ONLY", set()), ("NEW_IMAGE", {"NewImage"}), ("OLD_IMAGE", {"OldImage"}),
     ("NEW_AND_OLD_IMAGES", {"NewImage", "OldImage"})],
)
def test_stream_view_type(project: Path, r: redis.Redis, redis_url: str, view: str, present: set) -> None:
    feed = feed_for(make_project(project, view=view), redis_url)
    app = app_db(project / "app.db")
    feed.step()
    app.execute("INSERT INTO items VALUES (1, 'a', 1)")
    app.execute("UPDATE items SET n = 2")
    feed.step()
    modify = queued_events(r)[0]["payload"]["Records"][1]["dynamodb"]
    assert modify["StreamViewType"] == view
    assert {k for k in modify if k.endswith("Image")} == present
    assert modify["Keys"] == {"id": {"N": "1"}}


def test_batch_item_failures_retry_from_the_first_failed_record(
    project: Path, r: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    feed = feed_for(make_project(project, retries=1), redis_url)
    app = app_db(project / "app.db")
    feed.step()
    app.executemany("INSERT INTO items(name) VALUES (?)", [(str(i),) for i in range(5)])
    feed.step()
    event = queued_events(r)[0]
    seqs = [x["dynamodb"]["SequenceNumber"] for x in event["payload"]["Records"]]
    failures = {"batchItemFailures": [{"itemIdentifier": seqs[3]}, {"itemIdentifier": seqs[2]}]}
    finish(r, event["id"], result=failures)
    feed.step()
    retry = queued_events(r)[0]
    assert [x["dynamodb"]["SequenceNumber"] for x in retry["payload"]["Records"]] == seqs[2:]
    finish(r, retry["id"], result={"batchItemFailures": [{"itemIdentifier": seqs[4]}]})
    app.execute("INSERT INTO items(name) VALUES ('later')")
    with caplog.at_level(logging.ERROR):
        feed.step()
    assert "still failed after 1 retries" in caplog.text
    key = cursor_key("feed", (project / "app.db").resolve(), "items")
    assert r.hget(key + ":stats", "records_failed") == b"1"
    later = queued_events(r)[0]["payload"]["Records"]
    assert [x["dynamodb"]["NewImage"]["name"] for x in later] == [{"S": "later"}]


def test_an_unknown_item_identifier_retries_the_whole_batch(
    project: Path, r: redis.Redis, redis_url: str
) -> None:
    feed = feed_for(make_project(project), redis_url)
    app = app_db(project / "app.db")
    feed.step()
    app.executemany("INSERT INTO items(name) VALUES (?)", [("a",), ("b",)])
    feed.step()
    event = queued_events(r)[0]
    finish(r, event["id"], result={"batchItemFailures": [{"itemIdentifier": "nonsense"}]})
    feed.step()
    assert len(queued_events(r)[0]["payload"]["Records"]) == 2


def test_a_dead_batch_is_passed_over(project: Path, r: redis.Redis, redis_url: str,
                                    caplog: pytest.LogCaptureFixture) -> None:
    feed = feed_for(make_project(project, batch_size=1), redis_url)
    app = app_db(project / "app.db")
    feed.step()
    app.executemany("INSERT INTO items(name) VALUES (?)", [("a",), ("b",)])
    feed.step()
    first = queued_events(r)[0]
    feed.step()
    assert [e["id"] for e in queued_events(r)] == [first["id"]], "blocked behind the failing batch"
    with caplog.at_level(logging.ERROR):
        finish(r, first["id"], status="dead")
        feed.step()
    assert "is dead after its retries; moving on" in caplog.text
    nxt = queued_events(r)[0]["payload"]["Records"]
    assert nxt[0]["dynamodb"]["NewImage"]["name"] == {"S": "b"}


def test_batching_window_waits_to_fill_a_batch(project: Path, r: redis.Redis, redis_url: str) -> None:
    now = [time.time()]
    feed = feed_for(make_project(project, batch_size=3, window=5), redis_url, clock=lambda: now[0])
    app = app_db(project / "app.db")
    feed.step()
    app.executemany("INSERT INTO items(name) VALUES (?)", [("a",), ("b",)])
    feed.step()
    assert queued_events(r) == []
    now[0] += 6
    feed.step()
    assert len(queued_events(r)[0]["payload"]["Records"]) == 2
    finish(r, queued_events(r)[0]["id"])
    app.executemany("INSERT INTO items(name) VALUES (?)", [("c",), ("d",), ("e",)])
    feed.step()  # a full batch goes at once
    assert len(queued_events(r)[0]["payload"]["Records"]) == 3


def test_published_changes_are_pruned_once_done(project: Path, r: redis.Redis, redis_url: str) -> None:
    now = [time.time()]
    feed = feed_for(make_project(project, batch_size=700), redis_url, clock=lambda: now[0])
    app = app_db(project / "app.db")
    feed.step()
    app.executemany("INSERT INTO items(name) VALUES (?)", [(str(i),) for i in range(600)])
    feed.step()
    count = "SELECT count(*) FROM _lambdalite_changes"
    assert app.execute(count).fetchone()[0] == 600
    finish(r, queued_events(r)[0]["id"])
    app.execute("INSERT INTO items(name) VALUES ('new')")
    now[0] += 1
    feed.step()
    assert app.execute(count).fetchone()[0] == 601, "too soon: Redis may not have the outcome on disk"
    for _ in range(3):
        now[0] += 6
        feed.step()
    assert app.execute(count).fetchone()[0] == 1, "pruned in small batches, the unfinished one kept"


def test_bad_input_is_logged_once_and_waited_out(project: Path, r: redis.Redis, redis_url: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    now = [time.time()]
    extra = ('[functions.other]\nhandler = "h.h"\n[[functions.other.triggers]]\n'
             'source = "sqlite"\ndatabase = "junk.db"\ntable = "x"\n')
    registry = make_project(project, extra=extra)
    (project / "junk.db").write_bytes(b"not sqlite " * 20)
    feed = feed_for(registry, redis_url, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            feed.step()
            now[0] += 1.1
    assert caplog.text.count("app.db: no such database file") == 1
    assert caplog.text.count("junk.db: not a SQLite database") == 1
    app = app_db(project / "app.db", schema="")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            feed.step()
            now[0] += 1.1
    assert caplog.text.count("no table 'items' yet") == 1
    app.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, n)")
    feed.step()
    app.execute("INSERT INTO items VALUES (1, 'a', 1)")
    feed.step()
    assert summary(queued_events(r)[0]["payload"]["Records"]) == [("INSERT", '{"id": {"N": "1"}}')]


def test_a_corrupt_change_row_is_logged_and_skipped(project: Path, r: redis.Redis, redis_url: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    feed = feed_for(make_project(project), redis_url)
    app = app_db(project / "app.db")
    feed.step()
    app.execute("INSERT INTO items VALUES (1, 'a', 1)")
    app.execute("INSERT INTO _lambdalite_changes(tbl, op, key, at) VALUES ('items', 'INSERT', '{bad', 0)")
    app.execute("INSERT INTO items VALUES (2, 'b', 2)")
    with caplog.at_level(logging.ERROR):
        feed.step()
    assert "is unreadable" in caplog.text
    assert [x[0] for x in summary(queued_events(r)[0]["payload"]["Records"])] == ["INSERT", "INSERT"]


def test_redis_outage_keeps_the_cursor_and_carries_on(project: Path, tmp_path_factory: pytest.TempPathFactory,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path_factory.mktemp("r2"), appendonly=True, appendfsync="always").start()
    url = server.url
    try:
        client = redis.Redis.from_url(url)
        feed = feed_for(make_project(project, batch_size=2), url)
        app = app_db(project / "app.db")
        feed.step()
        app.executemany("INSERT INTO items(name) VALUES (?)", [("a",), ("b",), ("c",)])
        feed.step()
        first = queued_events(client)[0]
        server.stop()
        with caplog.at_level(logging.WARNING):
            for _ in range(5):
                feed.step()
                feed.wait(0.01)
                feed.redis_down_until = 0.0  # skip the back-off: the test drives the clock
        assert caplog.text.count("redis unavailable") == 1
        server.start()
        finish(client, first["id"])
        with caplog.at_level(logging.INFO):
            feed.step()
        assert "redis is reachable again" in caplog.text
        names = [x["dynamodb"]["NewImage"]["name"] for x in records_of(queued_events(client))]
        assert names == [{"S": "c"}]
        client.close()
    finally:
        server.stop()


def test_rollback_journal_database_and_a_busy_writer(project: Path, r: redis.Redis, redis_url: str) -> None:
    feed = feed_for(make_project(project), redis_url)
    app = app_db(project / "app.db", journal="delete")
    feed.step()
    app.execute("BEGIN IMMEDIATE")
    app.execute("INSERT INTO items VALUES (1, 'a', 1)")
    feed.step()  # the application holds the write lock: the feed reads around it
    app.execute("COMMIT")
    feed.step()
    assert len(queued_events(r)[0]["payload"]["Records"]) == 1
    assert app.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert sqlite_capture.CHANGES in {n for (n,) in app.execute("SELECT name FROM sqlite_master")}


def test_the_batch_read_ahead_goes_after_a_retry_of_the_one_in_flight(
    project: Path, r: redis.Redis, redis_url: str
) -> None:
    """The next full batch is ready while one is in flight; a retry of part of that one still goes first,
    and a change made meanwhile comes after it."""
    feed = feed_for(make_project(project, batch_size=2, retries=1), redis_url)
    app = app_db(project / "app.db")
    feed.step()
    app.executemany("INSERT INTO items(name) VALUES (?)", [(str(i),) for i in range(7)])
    feed.step()

    def names() -> list[str]:
        (event,) = queued_events(r)
        return [x["dynamodb"]["NewImage"]["name"]["S"] for x in event["payload"]["Records"]]

    assert names() == ["0", "1"]
    (event,) = queued_events(r)
    seq = event["payload"]["Records"][1]["dynamodb"]["SequenceNumber"]
    finish(r, event["id"], result={"batchItemFailures": [{"itemIdentifier": seq}]})
    feed.step()
    assert names() == ["1"], "the failed record again, before the batch read ahead"
    finish(r, queued_events(r)[0]["id"])
    feed.step()
    assert names() == ["2", "3"]
    app.execute("UPDATE items SET name = 'changed' WHERE name = '4'")
    finish(r, queued_events(r)[0]["id"])
    feed.step()
    assert names() == ["4", "5"]
    finish(r, queued_events(r)[0]["id"])
    feed.step()
    assert names() == ["6", "changed"]
    key = cursor_key("feed", (project / "app.db").resolve(), "items")
    assert r.hget(key + ":stats", "batches") == b"5"
    assert (int(r.hget(key, "done")), int(r.hget(key, "last"))) == (6, 8), "done: the batch before the one in flight"
    finish(r, queued_events(r)[0]["id"])
    feed.step()
    assert queued_events(r) == [] and r.hget(key, "event") == b"" and r.hget(key, "done") == b"8"


def test_a_batch_read_ahead_long_before_its_publish_gets_a_fresh_envelope(
    project: Path, r: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event's age (maximum_event_age) counts from its publish, however long the batch before it ran."""
    from sources.sqlite import sqlite_ahead

    feed = feed_for(make_project(project, batch_size=2), redis_url)
    app = app_db(project / "app.db")
    feed.step()
    app.executemany("INSERT INTO items(name) VALUES (?)", [(str(i),) for i in range(4)])
    monkeypatch.setattr(sqlite_ahead, "AHEAD_FRESH", 0.0)
    feed.step()  # publishes the first batch, reads the second ahead and stages it
    time.sleep(0.02)
    started = time.time()
    finish(r, queued_events(r)[0]["id"])  # too late for the staged successor: the worker leaves it
    assert queued_events(r) == []
    feed.step()
    (event,) = queued_events(r)
    assert event["created_at"] >= started
    assert [x["dynamodb"]["NewImage"]["name"]["S"] for x in event["payload"]["Records"]] == ["2", "3"]
    assert r.keys("lambdalite:successor:*") == [], "the feed dropped what it staged"


def test_a_lone_surrogate_in_a_change_row_is_delivered_as_it_is(project: Path, r: redis.Redis, redis_url: str) -> None:
    """A change row written by hand may hold what no encoder of UTF-8 takes: it still goes out, exactly."""
    feed = feed_for(make_project(project), redis_url)
    app = app_db(project / "app.db")
    feed.step()
    app.execute("INSERT INTO _lambdalite_changes(tbl, op, key, new, at) VALUES ('items', 'INSERT', ?, ?, 0)",
                ('{"id": 1}', '{"id": 1, "name": "\\ud800x"}'))
    app.execute("INSERT INTO items VALUES (2, 'é', 2)")
    feed.step()
    records = queued_events(r)[0]["payload"]["Records"]
    assert [x["dynamodb"]["NewImage"]["name"] for x in records] == [{"S": "\ud800x"}, {"S": "é"}]


def test_the_worker_publishes_the_staged_batch_and_the_feed_follows(project: Path, r: redis.Redis,
                                                                     redis_url: str) -> None:
    """A clean success publishes the batch read ahead in the same transaction, cursor and all; the feed
    follows without publishing it again, also when it restarted in between."""
    feed = feed_for(make_project(project, batch_size=2), redis_url)
    app = app_db(project / "app.db")
    feed.step()
    app.executemany("INSERT INTO items(name) VALUES (?)", [(str(i),) for i in range(9)])
    feed.step()
    key = cursor_key("feed", (project / "app.db").resolve(), "items")

    def names() -> list[str]:
        (event,) = queued_events(r)
        return [x["dynamodb"]["NewImage"]["name"]["S"] for x in event["payload"]["Records"]]

    finish(r, queued_events(r)[0]["id"])
    assert names() == ["2", "3"], "published by the transaction that recorded the outcome"
    assert (r.hget(key, "done"), r.hget(key, "last"), r.hget(key, "event")) == (
        b"2", b"4", queued_events(r)[0]["id"].encode())
    feed.step()
    assert names() == ["2", "3"] and feed.in_flight() == [queued_events(r)[0]["id"]]

    restarted = feed_for(make_project(project, batch_size=2), redis_url)
    finish(r, queued_events(r)[0]["id"])  # releases what the feed staged before its restart
    assert names() == ["4", "5"]
    restarted.step()  # follows the cursor; stages the batch after the one in flight
    assert names() == ["4", "5"] and len(r.keys("lambdalite:successor:*")) == 1
    finish(r, queued_events(r)[0]["id"], release=False)  # as if the worker had been faster than the staging
    assert queued_events(r) == []
    restarted.step()
    assert names() == ["6", "7"]
    finish(r, queued_events(r)[0]["id"])
    restarted.step()
    assert names() == ["8"]
    finish(r, queued_events(r)[0]["id"])
    restarted.step()
    assert queued_events(r) == [] and r.hget(key, "done") == r.hget(key, "last") == b"9"
    assert r.hget(key + ":stats", "batches") == b"5" and r.hget(key + ":stats", "records") == b"9"
    assert r.keys("lambdalite:successor:*") == []
    feed.close()
    restarted.close()


def test_a_cursor_holds_its_records_compressed_and_reads_them_as_json_too() -> None:
    """The cursor's records are compressed; a cursor written as plain JSON (before) still reads."""
    import json
    import zlib

    from sources.sqlite.sqlite_cursor import read_cursor

    records = [{"dynamodb": {"SequenceNumber": "000000000000000000001"}, "eventName": "INSERT"}]
    for raw in (zlib.compress(json.dumps(records).encode(), 1), json.dumps(records).encode()):
        cursor, problems = read_cursor({b"last": b"1", b"done": b"0", b"event": b"e1", b"records": raw})
        assert (cursor["event"], cursor["records"], problems) == ("e1", records, [])
    cursor, problems = read_cursor({b"last": b"1", b"event": b"e1", b"records": b"x\x9cgarbage"})
    assert cursor["event"] == "" and "cannot be read" in problems[0]


def test_a_new_revision_starts_and_stops_streams_and_keeps_the_unchanged(project: Path, r: redis.Redis,
                                                                          redis_url: str) -> None:
    from broker.registry import parse_registry

    registry = make_project(project)
    app = app_db(project / "app.db")
    app.executescript("CREATE TABLE other(id INTEGER PRIMARY KEY, name TEXT)")
    feed = feed_for(registry, redis_url)
    feed.step()
    [kept] = feed.streams
    text = (project / "lambdalite.toml").read_text() + (
        '[functions.late]\nhandler = "handlers.noop.handler"\n'
        '[[functions.late.triggers]]\nsource = "sqlite"\ndatabase = "app.db"\ntable = "other"\n')
    feed.follow(parse_registry(text.encode(), project / "lambdalite.toml"))
    assert feed.changed.is_set()
    feed.step()
    assert [s.function.name for s in feed.streams] == ["feed", "late"] and feed.streams[0] is kept
    app.execute("INSERT INTO other(name) VALUES ('x')")
    app.execute("INSERT INTO items(name, n) VALUES ('y', 1)")
    feed.step()
    feed.step()
    assert [e["payload"]["Records"][0]["dynamodb"]["NewImage"]["name"] for e in queued_events(r, "late")] == [
        {"S": "x"}]
    assert len(queued_events(r, "feed")) == 1
    feed.follow(parse_registry(b'[functions.late]\nhandler = "handlers.noop.handler"\n', project / "lambdalite.toml"))
    feed.step()
    assert feed.streams == [] and feed.databases == {}  # no stream left: the database is let go
    app.execute("INSERT INTO items(name, n) VALUES ('z', 2)")
    feed.step()
    assert len(queued_events(r, "feed")) == 1  # removed: no new events
    feed.close()
