"""Shared pieces of the files-source tests: a project with triggers, a watcher driven in-process,
and reading back what landed in Redis."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from broker.queues import function_queue
from broker.redis_server.embedded import RedisServer
from broker.registry import Registry, load_registry
from sources.files.files import BucketWatcher

ALL = '["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]'


def write_config(project: Path, triggers: dict[str, list[str]]) -> Path:
    """``lambdalite.toml`` with one function per name, each with the given trigger tables' bodies."""
    text = ""
    for name, bodies in triggers.items():
        text += f'[functions.{name}]\nhandler = "handlers.echo.handler"\n'
        for body in bodies:
            text += f'[[functions.{name}.triggers]]\nsource = "files"\n{body}\n'
    path = project / "lambdalite.toml"
    path.write_text(text)
    return path


def records(client: redis.Redis, function: str) -> list[dict[str, Any]]:
    """Every S3 record queued for ``function``, oldest first (one record per job)."""
    queue = function_queue(client, function)
    out = []
    for job_id in queue.get_job_ids():
        job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
        envelope = job.args[0]
        assert envelope["source"] == "files" and envelope["function"] == function
        (record,) = envelope["payload"]["Records"]
        out.append(record)
    return out


def keys(client: redis.Redis, function: str, event_name: str | None = None) -> list[str]:
    """The decoded keys of the queued records, optionally of one event name."""
    return [
        unquote_plus(r["s3"]["object"]["key"])
        for r in records(client, function)
        if event_name is None or r["eventName"] == event_name
    ]


class Driver:
    """A :class:`BucketWatcher` stepped by the test thread."""

    def __init__(self, watcher: BucketWatcher) -> None:
        self.watcher = watcher

    def until(self, condition: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            self.watcher.step(0.05)

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.watcher.step(0.05)


def uploads_project(project: Path) -> Path:
    """A project with an ``uploads`` bucket and a function ``fn`` on all of its events."""
    (project / "buckets" / "uploads").mkdir()
    write_config(project, {"fn": [f'bucket = "uploads"\nevents = {ALL}']})
    return project


def make_watcher(project: Path, client: redis.Redis, registry: Registry | None = None) -> BucketWatcher:
    registry = registry or load_registry(project / "lambdalite.toml")
    return BucketWatcher(project / "buckets", registry, client)


class PrivateRedis(RedisServer):
    """A redis-server of the test's own, with AOF on, that the test can stop and start again."""

    def __init__(self) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="ll-files-redis-")), appendonly=True, appendfsync="always")

    def stop(self) -> None:
        super().stop()
        if self.socket.exists():
            os.unlink(self.socket)
