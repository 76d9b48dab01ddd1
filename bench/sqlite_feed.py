"""Benchmark of the SQLite change feed with the real stack (scaler, workers, feed process).

Prints, each beside a reference measured in the same run:

* changes/s delivered to a no-op handler at batch_size 1 and 100 (references: no-op async events/s
  published straight to the queue, one change per event; records/s when the same 100-record
  batches are all queued at once, so that the worker never waits for the feed);
* commit -> handler latency, p50 and p99 (reference: publish -> handler for a direct async event);
* the application's insert rate with and without the capture triggers, one row per transaction
  and 10,000 rows per transaction.

Run: ``.venv/bin/python bench/sqlite_feed.py`` (about a minute; starts its own redis-server).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# This folder holds http.py (bench/http.py), which would shadow the standard library's http package.
_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker import stats  # noqa: E402
from broker.envelope import Event  # noqa: E402
from broker.queues import Publisher  # noqa: E402
from broker.redis_server.embedded import RedisServer  # noqa: E402
from broker.registry import load_registry  # noqa: E402
from sources.sqlite import dynamodb, sqlite_capture  # noqa: E402
from sources.sqlite.sqlite_cursor import cursor_key  # noqa: E402

HANDLER = '''
import json, os, time
HERE = os.path.dirname(os.path.abspath(__file__))

def noop(event, context):
    return None

def latency(event, context):
    now = time.time()
    if "Records" in event:
        lags = [now - float(r["dynamodb"]["NewImage"]["t"]["N"]) for r in event["Records"]]
    else:
        lags = [now - event["t"]]
    with open(os.path.join(HERE, "lags.txt"), "a") as f:
        f.write("".join(f"{x}\\n" for x in lags))
'''

SCHEMA = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, n INTEGER, t REAL)"


def config(handler: str, batch_size: int) -> str:
    return (f'[functions.f]\nhandler = "benchhandler.{handler}"\ntimeout = 30\nmax_concurrency = 1\n'
            f'[[functions.f.triggers]]\nsource = "sqlite"\ndatabase = "app.db"\ntable = "items"\n'
            f"batch_size = {batch_size}\n"
            f'[functions.direct]\nhandler = "benchhandler.{handler}"\ntimeout = 30\nmax_concurrency = 1\n')


class Stack:
    def __init__(self, project: Path, url: str) -> None:
        env = {**os.environ, "LAMBDALITE_REDIS_URL": url, "PYTHONPATH": str(ROOT), "LAMBDALITE_LOG_LEVEL": "WARNING",
               "LAMBDALITE_SANDBOX_USER": "root"}  # handlers here live in a 0700 temp folder
        out = (project / "stack.log").open("a")
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "workers.scaler"], cwd=project, env=env, stdout=out,
                             stderr=subprocess.STDOUT),
            subprocess.Popen([sys.executable, "-m", "sources.sqlite"], cwd=project, env=env, stdout=out,
                             stderr=subprocess.STDOUT),
        ]

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(15)


def fresh(project: Path, client: redis.Redis, handler: str, batch_size: int) -> sqlite3.Connection:
    client.flushall()
    for name in ("app.db", "app.db-wal", "app.db-shm", "lags.txt"):
        (project / name).unlink(missing_ok=True)
    (project / "lambdalite.toml").write_text(config(handler, batch_size))
    app = sqlite3.connect(project / "app.db", isolation_level=None, timeout=10)
    app.execute("PRAGMA journal_mode=wal")
    app.execute(SCHEMA)
    feed = sqlite_capture.connect(project / "app.db")
    sqlite_capture.ensure(feed, "items")
    feed.close()
    return app


def warm_up(project: Path, url: str, client: redis.Redis) -> None:
    """Wait until the scaler has a worker that has run one event, so start-up is not measured."""
    registry = load_registry(project / "lambdalite.toml")
    Publisher(client, registry).publish(Event("direct", payload={"t": time.time()}))
    deadline = time.time() + 60
    while int(client.hget(stats.stats_key("direct"), "succeeded") or 0) < 1:
        if time.time() > deadline:
            raise SystemExit("the stack did not run a warm-up event within 60 s; see stack.log")
        time.sleep(0.02)


def delivery_rate(project: Path, url: str, client: redis.Redis, batch_size: int, n: int) -> float:
    app = fresh(project, client, "noop", batch_size)
    stack = Stack(project, url)
    try:
        warm_up(project, url, client)
        app.execute("BEGIN")
        app.executemany("INSERT INTO items(name, n, t) VALUES ('x', ?, 0)", [(i,) for i in range(n)])
        app.execute("COMMIT")
        last = app.execute("SELECT max(id) FROM _lambdalite_changes").fetchone()[0]
        key = cursor_key("f", (project / "app.db").resolve(), "items")
        started = time.perf_counter()
        while int(client.hget(key, "done") or 0) < last:
            time.sleep(0.002)
        return n / (time.perf_counter() - started)
    finally:
        stack.stop()
        app.close()


def direct_rate(project: Path, url: str, client: redis.Redis, n: int) -> float:
    fresh(project, client, "noop", 1)
    stack = Stack(project, url)
    try:
        warm_up(project, url, client)
        registry = load_registry(project / "lambdalite.toml")
        started = time.perf_counter()
        Publisher(client, registry).publish_many([Event("direct", payload={"t": 0}) for _ in range(n)])
        while int(client.hget(stats.stats_key("direct"), "succeeded") or 0) < n + 1:
            time.sleep(0.002)
        return n / (time.perf_counter() - started)
    finally:
        stack.stop()


def direct_batch_rate(project: Path, url: str, client: redis.Redis, batch_size: int, n: int) -> float:
    """Records/s when the same batches wait in the queue all at once: the worker and its sandbox alone."""
    fresh(project, client, "noop", batch_size)
    stack = Stack(project, url)
    try:
        warm_up(project, url, client)
        registry = load_registry(project / "lambdalite.toml")
        arn = dynamodb.stream_arn(str(project / "app.db"), "items")
        events = [Event("direct", payload={"Records": [
            dynamodb.record(change_id=i, event_name="INSERT", keys={"id": i}, old=None,
                            new={"id": i, "name": "x", "n": i, "t": 0}, created=time.time(),
                            view="NEW_AND_OLD_IMAGES", table="items", arn=arn)
            for i in range(start, start + batch_size)]}) for start in range(0, n, batch_size)]
        publisher = Publisher(client, registry)
        for start in range(0, len(events), 50):  # stored before the clock starts
            publisher.publish_many(events[start:start + 50])
        started = time.perf_counter()
        while int(client.hget(stats.stats_key("direct"), "succeeded") or 0) < len(events) + 1:
            time.sleep(0.002)
        return n / (time.perf_counter() - started)
    finally:
        stack.stop()


def latencies(project: Path, url: str, client: redis.Redis, n: int) -> tuple[list[float], list[float]]:
    app = fresh(project, client, "latency", 100)
    stack = Stack(project, url)
    lags = project / "lags.txt"
    try:
        warm_up(project, url, client)
        lags.unlink(missing_ok=True)
        registry = load_registry(project / "lambdalite.toml")
        publisher = Publisher(client, registry)
        for _ in range(n):  # reference: a direct async event, one at a time
            publisher.publish(Event("direct", payload={"t": time.time()}))
            time.sleep(0.02)
        _wait_lines(lags, n)
        direct = _read(lags)
        lags.unlink()
        for i in range(n):
            app.execute("INSERT INTO items(name, n, t) VALUES ('x', ?, ?)", (i, time.time()))
            time.sleep(0.02)
        _wait_lines(lags, n)
        return _read(lags), direct
    finally:
        stack.stop()
        app.close()


def _wait_lines(path: Path, n: int) -> None:
    deadline = time.time() + 60
    while not path.exists() or len(path.read_text().splitlines()) < n:
        if time.time() > deadline:
            raise SystemExit(f"{path}: fewer than {n} deliveries within 60 s")
        time.sleep(0.01)


def _read(path: Path) -> list[float]:
    return [float(x) * 1000 for x in path.read_text().split()]


def insert_rate(folder: Path, capture: bool, rows: int, per_txn: int) -> float:
    path = folder / f"insert-{capture}-{per_txn}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("PRAGMA journal_mode=wal")
    app.execute(SCHEMA)
    if capture:
        feed = sqlite_capture.connect(path)
        sqlite_capture.ensure(feed, "items")
        feed.close()
    started = time.perf_counter()
    for start in range(0, rows, per_txn):
        app.execute("BEGIN")
        app.executemany("INSERT INTO items(name, n, t) VALUES ('some name', ?, 1.5)",
                        [(i,) for i in range(start, start + per_txn)])
        app.execute("COMMIT")
    rate = rows / (time.perf_counter() - started)
    app.close()
    return rate


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="ll-bench-"))
    server = RedisServer(folder, appendonly=True).start()
    url = server.url
    client = redis.Redis.from_url(url)
    project = folder / "project"
    project.mkdir()
    (project / "benchhandler.py").write_text(HANDLER)
    try:
        print("SQLite change feed benchmark (real scaler, workers and feed; no-op handlers)")
        print(f"machine: {os.cpu_count()} cores; SQLite {sqlite3.sqlite_version}")
        ref = direct_rate(project, url, client, 300)
        one = delivery_rate(project, url, client, 1, 300)
        hundred = delivery_rate(project, url, client, 100, 20_000)
        queued = direct_batch_rate(project, url, client, 100, 20_000)
        print(f"delivered, batch_size 1:   {one:9,.0f} changes/s   (reference: {ref:,.0f} direct no-op events/s)")
        print(f"delivered, batch_size 100: {hundred:9,.0f} changes/s   (reference: {queued:,.0f} records/s in the same "
              f"batches queued at once, the worker alone; {hundred / queued:.2f} x; goal >= 20,000/s)")
        lag, direct = latencies(project, url, client, 200)
        print(f"commit -> handler: p50 {pct(lag, 50):6.1f} ms, p99 {pct(lag, 99):6.1f} ms   "
              f"(reference, publish -> handler: p50 {pct(direct, 50):.1f} ms, p99 {pct(direct, 99):.1f} ms; "
              "goal p50 <= 20 ms)")
        for per_txn, rows in ((1, 3_000), (10_000, 100_000)):
            plain = insert_rate(folder, False, rows, per_txn)
            captured = insert_rate(folder, True, rows, per_txn)
            print(f"application inserts, {per_txn:>6} per transaction: {captured:9,.0f} rows/s with capture, "
                  f"{plain:9,.0f} without ({captured / plain:.0%})")
        print(f"command: {sys.executable} bench/sqlite_feed.py")
    finally:
        client.close()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
