"""Shared pieces of the SQLite change feed tests: a project with a sqlite trigger, and a consumer.

The consumer pops jobs from a function's real RQ queue and records their final outcome with
``broker.results.record``, as the worker does; it lets the feed's tests run without ``workers/``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from broker import results, successors
from broker.queues import function_queue
from broker.registry import Registry, load_registry


def make_project(project: Path, *, table: str = "items", batch_size: int = 100, view: str | None = None,
                 retries: int = 2, window: float = 0.0, database: str = "app.db",
                 extra: str = "") -> Registry:
    lines = [
        "[functions.feed]", 'handler = "handlers.noop.handler"', f"retries = {retries}",
        "[[functions.feed.triggers]]", 'source = "sqlite"', f'database = "{database}"', f'table = "{table}"',
        f"batch_size = {batch_size}", f"batching_window = {window}",
    ]
    if view:
        lines.append(f'view = "{view}"')
    (project / "lambdalite.toml").write_text("\n".join(lines) + "\n" + extra)
    return load_registry(project / "lambdalite.toml")


def app_db(path: Path, schema: str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, n)",
           journal: str = "wal") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.execute(f"PRAGMA journal_mode={journal}")
    if schema:
        conn.executescript(schema)
    return conn


def queued_events(r: redis.Redis, function: str = "feed") -> list[dict[str, Any]]:
    """The envelopes waiting in ``function``'s queue, oldest first."""
    queue = function_queue(r, function)
    return [Job.fetch(i, connection=r, serializer=JSONSerializer).args[0] for i in queue.job_ids]


def finish(r: redis.Redis, event_id: str, status: str = "succeeded", result: Any = None,
           release: bool = True) -> None:
    """Record an outcome and drop the job, as the worker does: in the same transaction, a clean
    success publishes the successor the feed staged (unless ``release`` is False: a worker that
    got there before the feed staged it, or after its deadline)."""
    with r.pipeline(transaction=True) as pipe:
        results.record(pipe, event_id, results.Outcome(status, result=result))
        if release and status == "succeeded" and successors.clean(result):
            successors.release(pipe, event_id)
        pipe.execute()
    queue = function_queue(r, "feed")
    queue.remove(event_id)


class Consumer(threading.Thread):
    """Runs ``handler(payload)`` for each job of a function and records the outcome.

    A handler that raises makes the event ``dead`` (the real worker would retry it first).
    """

    def __init__(self, url: str, handler: Callable[[dict[str, Any]], Any], function: str = "feed") -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.handler = handler
        self.function = function
        self.stopped = threading.Event()
        self.events: list[dict[str, Any]] = []

    def run(self) -> None:
        queue = function_queue(self.client, self.function)
        while not self.stopped.is_set():
            popped = self.client.blpop([queue.key], timeout=0.1)
            if popped is None:
                continue
            job_id = popped[1].decode()
            event = Job.fetch(job_id, connection=self.client, serializer=JSONSerializer).args[0]
            self.events.append(event)
            try:
                outcome = results.Outcome("succeeded", result=self.handler(event["payload"]))
            except Exception as e:  # the stand-in worker turns any failure into a final "dead"
                error = {"errorType": type(e).__name__, "errorMessage": str(e)}
                outcome = results.Outcome("dead", error=error)
            with self.client.pipeline(transaction=True) as pipe:
                results.record(pipe, job_id, outcome)
                if outcome.ok and successors.clean(outcome.result):
                    successors.release(pipe, job_id)  # as the worker does
                pipe.delete(f"rq:job:{job_id}")
                pipe.execute()

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        self.client.close()


def records_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rec for event in events for rec in event["payload"]["Records"]]


def summary(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(eventName, Keys as JSON) per record: compact to assert on."""
    return [(r["eventName"], json.dumps(r["dynamodb"]["Keys"], sort_keys=True)) for r in records]


def write_acceptance_changes(db: Path) -> None:
    """The acceptance scenario's writers, at the same time: the ``sqlite3`` shell inserts 300 rows
    in one transaction, updates 100 and deletes 50, while a Python process inserts 200 rows, one
    per transaction."""
    inserts = "".join(f"INSERT INTO items VALUES ({i}, 'shell{i}', {i});\n" for i in range(1, 301))
    script = (".timeout 10000\nBEGIN;\n" + inserts + "COMMIT;\n"
              "UPDATE items SET n = n + 1000 WHERE id <= 100;\n"
              "DELETE FROM items WHERE id > 250 AND id <= 300;\n")
    other = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None, timeout=10)\n"
        "for i in range(200):\n"
        "    c.execute('INSERT INTO items(id, name, n) VALUES (?, ?, ?)', (10000 + i, 'py', i))\n"
    )])
    try:
        shell = subprocess.run(["sqlite3", str(db)], input=script.encode(), capture_output=True, timeout=60)
        assert shell.returncode == 0, shell.stderr
        assert other.wait(60) == 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def assert_acceptance_records(records: list[dict[str, Any]]) -> None:
    """Exactly 500 INSERT, 100 MODIFY and 50 REMOVE records, in order per key and overall."""
    counts: dict[str, int] = defaultdict(int)
    per_key: dict[int, list[str]] = defaultdict(list)
    for rec in records:
        counts[rec["eventName"]] += 1
        per_key[int(rec["dynamodb"]["Keys"]["id"]["N"])].append(rec["eventName"])
    assert dict(counts) == {"INSERT": 500, "MODIFY": 100, "REMOVE": 50}
    for key, ops in per_key.items():
        expected = ["INSERT", "MODIFY"] if key <= 100 else ["INSERT", "REMOVE"] if 250 < key <= 300 else ["INSERT"]
        assert ops == expected, (key, ops)
    seqs = [int(x["dynamodb"]["SequenceNumber"]) for x in records]
    assert seqs == sorted(seqs)
