"""A Redis restart while the watcher runs: nothing lost, nothing published twice."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import redis
from bucketkit import Driver, PrivateRedis, keys, make_watcher, records, uploads_project

from broker.connection import connect

PUT, DELETE = "ObjectCreated:Put", "ObjectRemoved:Delete"


def test_redis_restarted_midway_loses_nothing_and_repeats_nothing(
    project: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lambdalite.files")
    uploads = uploads_project(project) / "buckets" / "uploads"
    server = PrivateRedis()
    server.start()
    client = connect(server.url)  # the client the process uses, with its own short retries
    check = redis.Redis.from_url(server.url)
    watcher = make_watcher(project, client)
    watcher.start()
    d = Driver(watcher)
    try:
        for name in ("a1.jpg", "a2.jpg", "a3.jpg"):
            (uploads / name).write_bytes(name.encode())
        d.until(lambda: len(records(check, "fn")) == 3)

        server.stop()
        for name in ("b1.jpg", "b 2.jpg", "b+3.jpg"):
            (uploads / name).write_bytes(name.encode())
        (uploads / "a1.jpg").unlink()
        d.run(1.0)  # the watcher keeps running, and keeps watching, while Redis is away
        assert watcher.observer is not None and watcher.observer.healthy()

        server.start()  # the same data folder: the AOF brings back the queues and the manifest
        d.until(lambda: len(records(check, "fn")) == 7)
        d.run(0.5)
        expected = ["a1.jpg", "a2.jpg", "a3.jpg", "b 2.jpg", "b+3.jpg", "b1.jpg"]
        assert sorted(keys(check, "fn", PUT)) == expected
        assert keys(check, "fn", DELETE) == ["a1.jpg"]
        # the watcher's lines (the restarted server's own wait for its socket may log one of its own)
        lost = [r for r in caplog.records if r.name == "lambdalite.files" and "redis unavailable" in r.getMessage()]
        assert len(lost) == 1, "an outage is logged once"
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        watcher.stop()
        check.close()
        client.close()
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)


def test_redis_down_at_start_then_up(project: Path) -> None:
    uploads = uploads_project(project) / "buckets" / "uploads"
    (uploads / "waiting.jpg").write_bytes(b"w")
    os.utime(uploads / "waiting.jpg", (1, 1))
    server = PrivateRedis()
    client = connect(server.url)
    watcher = make_watcher(project, client)
    watcher.start()
    d = Driver(watcher)
    try:
        d.run(0.5)  # no server yet: the watcher waits, backing off
        server.start()
        check = redis.Redis.from_url(server.url)
        d.until(lambda: keys(check, "fn") == ["waiting.jpg"])
        check.close()
    finally:
        watcher.stop()
        client.close()
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)
