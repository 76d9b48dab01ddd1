"""A database replaced (``mv`` of a new file) or deleted under the feed: noticed, logged once,
reopened with its capture re-installed, and read from its first change."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import redis
from sqlite_support import app_db, finish, make_project, queued_events, records_of

from broker.connection import connect
from sources.sqlite.sqlite import Feed
from sources.sqlite.sqlite_cursor import cursor_key
from tests.stack import Scaler
from tests.test_sqlite_stack import CONFIG, FIXTURES, FeedProcess, records
from tests.waiting import wait_until

SCHEMA = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, n)"


def names(r: redis.Redis) -> list[str]:
    return [rec["dynamodb"]["NewImage"]["name"]["S"] for rec in records_of(queued_events(r))]


def steps(feed: Feed, n: int = 5) -> None:
    for _ in range(n):
        feed.step()
        time.sleep(0.03)  # past the feed's look at the file (every 0.1 s) within a few steps


def replace_with_new(path: Path, rows: tuple[str, ...] = ()) -> None:
    """Write a new database beside ``path`` and ``mv`` it over.

    The app opens the new file only once the feed has let go of the old one: in WAL mode a
    connection still open to the renamed-over file checkpoints and removes ``app.db-wal`` by name
    when it closes, which SQLite documents as a way to corrupt a database, feed or no feed."""
    fresh = path.with_name("fresh.db")
    conn = app_db(fresh, SCHEMA)
    conn.executemany("INSERT INTO items(name, n) VALUES (?, 0)", [(name,) for name in rows])
    conn.close()
    os.rename(fresh, path)


def test_a_replaced_database_is_reopened_and_read_from_its_first_change(
    project: Path, r: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    registry = make_project(project, batch_size=10)
    app = app_db(project / "app.db", SCHEMA)
    feed = Feed(registry, connect(redis_url))
    feed.step()
    app.executemany("INSERT INTO items(name, n) VALUES (?, 0)", [(f"old{i}",) for i in range(5)])
    steps(feed)
    (event,) = queued_events(r)
    finish(r, event["id"])
    steps(feed)
    key = cursor_key("feed", (project / "app.db").resolve(), "items")
    assert int(r.hget(key, "last")) == 5
    app.close()

    with caplog.at_level(logging.INFO, logger="lambdalite.sqlite"):
        replace_with_new(project / "app.db", ("there before",))
        steps(feed, 10)
        app = app_db(project / "app.db", "")
        app.execute("INSERT INTO items(name, n) VALUES ('new one', 1)")
        steps(feed)
    assert names(r) == ["new one"]  # change 1 of the new file, though the cursor had passed 5
    new = queued_events(r)[0]["payload"]["Records"][0]
    assert new["eventName"] == "INSERT" and new["dynamodb"]["Keys"] == {"id": {"N": "2"}}
    said = [rec.getMessage() for rec in caplog.records if "another database file" in rec.getMessage()]
    assert len(said) == 1, caplog.text
    assert r.hget(key, "file").decode() == "{0.st_dev}:{0.st_ino}".format(os.stat(project / "app.db"))
    feed.close()
    app.close()


def test_a_deleted_database_is_said_once_and_a_new_one_followed(
    project: Path, r: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    registry = make_project(project)
    app = app_db(project / "app.db", SCHEMA)
    feed = Feed(registry, connect(redis_url))
    feed.step()
    app.execute("INSERT INTO items(name, n) VALUES ('a', 0)")
    steps(feed)
    finish(r, queued_events(r)[0]["id"])
    app.close()
    with caplog.at_level(logging.INFO, logger="lambdalite.sqlite"):
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{project / 'app.db'}{suffix}")
        steps(feed, 15)
        time.sleep(1.1)  # past a retry of the open
        steps(feed, 5)
        deleted = [rec for rec in caplog.records if "was deleted" in rec.getMessage()]
        assert len(deleted) == 1, caplog.text
        app = app_db(project / "app.db", SCHEMA)
        time.sleep(1.1)
        steps(feed, 5)
        app.execute("INSERT INTO items(name, n) VALUES ('b', 0)")
        steps(feed)
    assert names(r) == ["b"]
    assert len([rec for rec in caplog.records if "was deleted" in rec.getMessage()]) == 1
    feed.close()
    app.close()


def test_the_batch_in_flight_from_the_old_file_finishes_first(project: Path, r: redis.Redis, redis_url: str) -> None:
    registry = make_project(project, batch_size=2)
    app = app_db(project / "app.db", SCHEMA)
    feed = Feed(registry, connect(redis_url))
    feed.step()
    app.executemany("INSERT INTO items(name, n) VALUES (?, 0)", [(f"old{i}",) for i in range(5)])
    steps(feed)
    (first,) = queued_events(r)
    app.close()
    replace_with_new(project / "app.db")
    steps(feed, 10)
    app = app_db(project / "app.db", "")
    app.execute("INSERT INTO items(name, n) VALUES ('new', 1)")
    steps(feed)
    assert [e["id"] for e in queued_events(r)] == [first["id"]]  # nothing more while it is in flight
    finish(r, first["id"], release=False)
    steps(feed)
    assert names(r) == ["new"]  # the old file's unread rows went with it; the new file from its first change
    feed.close()
    app.close()


def test_mv_of_a_new_database_under_the_running_stack(project: Path, r: redis.Redis) -> None:
    """The acceptance case: the next row committed in the new file reaches the handler."""
    shutil.copy(FIXTURES / "stream_recorder.py", project / "stream_recorder.py")
    (project / "lambdalite.toml").write_text(CONFIG)
    app_db(project / "app.db").close()
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="60"):
        feed = FeedProcess(project)
        try:
            wait_until(lambda: _captured(project / "app.db"), timeout=60, what="the capture triggers")
            app = app_db(project / "app.db", "")
            app.execute("INSERT INTO items(name, n) VALUES ('before', 0)")
            app.close()
            wait_until(lambda: len(records(project)) == 1, timeout=30, what="the first row")

            replace_with_new(project / "app.db")
            replaced = time.time()
            log = Path(feed.log.name)
            # opened before the feed let go of the old file, the new one would take the old -wal for its own
            wait_until(lambda: "another database file" in log.read_text(), timeout=10, what="the feed to notice")
            wait_until(lambda: _captured(project / "app.db"), timeout=10, what="the capture in the new file")
            app = app_db(project / "app.db", "")
            app.execute("INSERT INTO items(name, n) VALUES ('after', 1)")
            committed = time.time()
            wait_until(lambda: len(records(project)) == 2, timeout=10, what="the row of the new file")
            app.close()
        finally:
            feed.stop()
    batches = [line for line in (project / "delivered.jsonl").read_text().splitlines() if line]
    got = records(project)
    assert [rec["dynamodb"]["NewImage"]["name"]["S"] for rec in got] == ["before", "after"]
    arrived = json.loads(batches[-1])["at"]
    print(f"replaced -> capture re-installed and row committed: {committed - replaced:.3f} s; "
          f"committed -> handler: {arrived - committed:.3f} s")
    assert log.read_text().count("another database file") == 1


def _captured(path: Path) -> bool:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] > 0
    finally:
        conn.close()


def test_a_database_replaced_while_the_feed_was_down_is_read_from_its_first_change(
    project: Path, r: redis.Redis, redis_url: str,
) -> None:
    registry = make_project(project, batch_size=10)
    app = app_db(project / "app.db", SCHEMA)
    feed = Feed(registry, connect(redis_url))
    feed.step()
    app.executemany("INSERT INTO items(name, n) VALUES (?, 0)", [(f"old{i}",) for i in range(5)])
    steps(feed)
    finish(r, queued_events(r)[0]["id"])
    steps(feed)
    app.close()
    feed.close()

    replace_with_new(project / "app.db")
    feed = Feed(registry, connect(redis_url))  # as after a restart: the cursor says change 5 of another file
    steps(feed)
    app = app_db(project / "app.db", "")
    app.execute("INSERT INTO items(name, n) VALUES ('new one', 1)")
    steps(feed)
    assert names(r) == ["new one"]
    feed.close()
    app.close()
