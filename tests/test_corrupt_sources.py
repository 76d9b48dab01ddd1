"""The sources over damaged Redis data: the files manifest, the SQLite cursor, outcome streams and
HTTP idempotency keys. What cannot be read is logged with its key and read as "not there yet", so
events are published again (at least once) rather than lost, and the process carries on.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from bucketkit import keys, uploads_project
from serving import queued, serve
from sqlite_support import Consumer, app_db, make_project, queued_events, records_of

from broker import results
from broker.connection import connect
from broker.registry import load_registry
from sources.http.intake import idempotency_key
from sources.http.webhook import create_app
from sources.sqlite.sqlite import Feed
from sources.sqlite.sqlite_cursor import cursor_key
from tests.waiting import wait_until

MANIFEST = "lambdalite:files:manifest:"
PUT, DELETE = "ObjectCreated:Put", "ObjectRemoved:Delete"

pytestmark = pytest.mark.timeout(120)


def start(project: Path, module: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", module], cwd=project, env={**os.environ}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == 0, out
    return out


def until(condition: Callable[[], object], proc: subprocess.Popen[str], what: str, timeout: float = 20.0) -> None:
    """:func:`wait_until` while ``proc`` runs; on a timeout, its output once stopped."""
    wait_until(condition, timeout, what,
               alive=lambda: None if proc.poll() is None else f"the process exited: {proc.communicate()[0]}",
               detail=lambda: f"output: {stop(proc)}")


def lines_naming(text: str, key: str) -> list[str]:
    return [line for line in text.splitlines() if key in line]


def test_files_source_reads_past_a_damaged_manifest(project: Path, redis_url: str, r: redis.Redis) -> None:
    uploads = uploads_project(project) / "buckets" / "uploads"
    other = project / "buckets" / "other"  # a bucket no trigger names: only its manifest is kept
    other.mkdir()
    for folder, name in ((uploads, "a.jpg"), (uploads, "b.jpg"), (other, "d.jpg")):
        (folder / name).write_bytes(name.encode())
        os.utime(folder / name, (1, 1))
    r.hset(MANIFEST + "uploads", mapping={"a.jpg": "garbage", b"\xff.jpg": "1:1:e", "gone.jpg": "1:1:e"})
    r.set(MANIFEST + "other", "garbage")

    proc = start(project, "sources.files")
    until(lambda: sorted(keys(r, "fn")) == ["a.jpg", "b.jpg", "gone.jpg"], proc, "the start-up scan")
    assert keys(r, "fn", DELETE) == ["gone.jpg"], "a manifest entry whose file is gone is a removal, as documented"
    until(lambda: r.type(MANIFEST + "other") == b"hash", proc, "the other bucket's fresh manifest")
    r.delete(MANIFEST + "uploads")
    r.set(MANIFEST + "uploads", "garbage")  # damaged while the watcher runs
    (uploads / "e.jpg").write_bytes(b"e")
    until(lambda: "e.jpg" in keys(r, "fn"), proc, "the file written after the damage")
    time.sleep(0.3)
    out = stop(proc)
    assert "Traceback" not in out, out
    assert len(lines_naming(out, "1 entry is not SIZE:MTIME_NS:ETAG (first: 'a.jpg')")) == 1, out
    assert len(lines_naming(out, r"field b'\xff.jpg' is not a UTF-8 object key; removed")) == 1, out
    assert len(lines_naming(out, f"{MANIFEST}other holds a string, not a hash; moved to")) == 1, out
    assert len(lines_naming(out, f"{MANIFEST}uploads holds a string, not a hash; moved to")) == 1, out
    assert sorted(keys(r, "fn")) == ["a.jpg", "b.jpg", "e.jpg", "gone.jpg"], "nothing lost, nothing twice"
    assert r.hkeys(MANIFEST + "uploads") == [b"e.jpg"] and r.hkeys(MANIFEST + "other") == [b"d.jpg"]


def test_sqlite_feed_carries_on_from_a_damaged_cursor(project: Path, redis_url: str, r: redis.Redis) -> None:
    make_project(project, batch_size=10)
    app = app_db(project / "app.db")
    key = cursor_key("feed", (project / "app.db").resolve(), "items")
    r.hset(key, mapping={"last": "abc", "done": "xyz", "event": "in-flight", "records": "not json",
                         "retries": "-1"})
    r.set(key + ":stats", "garbage")
    consumer = Consumer(redis_url, lambda payload: None)
    consumer.start()
    proc = start(project, "sources.sqlite")
    try:
        until(lambda: app.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] > 0,
              proc, "the capture triggers")
        app.executemany("INSERT INTO items(name) VALUES (?)", [(str(i),) for i in range(5)])
        until(lambda: len(records_of(consumer.events)) == 5, proc, "five records")
        r.delete(key)
        r.set(key, "garbage")  # damaged while the feed runs: read again after the next outage or restart
        out = stop(proc)
        proc = start(project, "sources.sqlite")
        app.executemany("INSERT INTO items(name) VALUES (?)", [("later",)])
        until(lambda: records_of(consumer.events)[-1]["dynamodb"]["NewImage"]["name"] == {"S": "later"}, proc,
              "the change made after the second damage")
        out += stop(proc)
    finally:
        consumer.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in out, out
    names = [x["dynamodb"]["NewImage"]["name"]["S"] for x in records_of(consumer.events)]
    assert names[:5] == ["0", "1", "2", "3", "4"] and names[-1] == "later"
    assert set(names) == {"0", "1", "2", "3", "4", "later"}, "at least once: what was pruned is not sent again"
    first = lines_naming(out, f"redis key {key}: ")
    assert len(first) == 1 and "'last' is 'abc'" in first[0] and "'done' is 'xyz'" in first[0], out
    assert "oldest change" in first[0] and "in-flight batch in-flight" in first[0]
    assert len(lines_naming(out, f"redis key {key}:stats holds a string, not a hash")) == 1, out
    assert len(lines_naming(out, f"redis key {key} holds a string, not a hash")) == 1, out
    assert int(r.hget(key + ":stats", "batches")) >= 1


def test_sqlite_feed_waits_past_a_damaged_outcome_of_its_batch(
        project: Path, redis_url: str, r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    feed = Feed(make_project(project), connect(redis_url), poll_interval=0.01)
    app = app_db(project / "app.db")
    feed.step()  # installs the capture triggers
    app.execute("INSERT INTO items(name) VALUES ('x')")
    feed.step()
    (event,) = queued_events(r)
    r.set(results.result_key(event["id"]), "garbage")
    feed.wait(0.05)
    feed.step()
    assert feed.in_flight() == [event["id"]], "still waiting: no outcome yet"
    r.xadd(results.result_key(event["id"]), {"outcome": "[not an outcome]"})
    feed.step()
    assert feed.in_flight() == [event["id"]]
    results.record(r, event["id"], results.Outcome("succeeded"))
    app.execute("INSERT INTO items(name) VALUES ('y')")
    feed.step()
    assert feed.in_flight() != [event["id"]] and len(queued_events(r)) == 2, "the next batch goes out"
    feed.close()
    assert "holds a string, not a stream" in caplog.text and "is not an outcome" in caplog.text


TOML = """
[functions.f]
handler = "handlers.echo.handler"
[[functions.f.triggers]]
source = "http"
path = "/hooks/open"
mode = "async"
"""


def test_idempotency_keys_holding_garbage_are_replaced_not_trusted(
        project: Path, redis_url: str, r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    (project / "lambdalite.toml").write_text(TOML)
    registry = load_registry(project / "lambdalite.toml")
    garbage = {
        idempotency_key("invoke:f", "k1"): lambda k: r.set(k, "not-an-event-id"),
        idempotency_key("invoke:f", "k2"): lambda k: r.hset(k, "x", 1),
        idempotency_key("invoke:f", "k3"): lambda k: r.set(k, "pending:garbage"),
        idempotency_key("webhook:f:/hooks/open", "k4"): lambda k: r.set(k, "{}"),
    }
    for key, damage in garbage.items():
        damage(key)
    r.hset("lambdalite:stats:f", "succeeded", "many")
    with serve(create_app(registry, redis_url)) as url:
        ids = []
        for name, path in (("k1", "/2015-03-31/functions/f/invocations"), ("k2", "/2015-03-31/functions/f/invocations"),
                           ("k3", "/2015-03-31/functions/f/invocations"), ("k4", "/hooks/open")):
            for attempt in range(2):  # the second request is a replay: the same id, nothing queued again
                answer = httpx.post(url + path, content=b"{}", headers={
                    "X-Amz-Invocation-Type": "Event", "Idempotency-Key": name}, timeout=10)
                assert answer.status_code == 202, answer.text
                event_id = answer.headers.get("x-amzn-RequestId") or answer.json()["id"]
                if attempt:
                    assert event_id == ids[-1]
                else:
                    ids.append(event_id)
        metrics = httpx.get(url + "/metrics", timeout=10)
        assert metrics.status_code == 200 and "lambdalite_redis_up 1.0" in metrics.text
    assert [e.id for e in queued(r, "f")] == ids, "each accepted event is stored, once"
    for key in garbage:
        assert r.get(key).decode() in ids, "the key now names the event it stored"
        assert sum(key in rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING) == 1
    assert "'succeeded' = 'many'" in caplog.text
