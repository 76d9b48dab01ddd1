"""``python -m sources.sqlite`` as a real process: stop, SIGKILL at the worst moment, the sqlite3 shell."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlite_support import (
    Consumer,
    app_db,
    assert_acceptance_records,
    make_project,
    queued_events,
    records_of,
    write_acceptance_changes,
)

from sources.sqlite.sqlite import FAULT_ENV
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


def start_feed(project: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sources.sqlite"], cwd=project, env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def stop(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def delivered(consumer: Consumer) -> list[dict[str, Any]]:
    return records_of(list(consumer.events))


def test_a_bad_config_is_one_line_and_exit_1(project: Path, redis_url: str) -> None:
    (project / "lambdalite.toml").write_text(
        '[functions.f]\nhandler = "a.b"\n[[functions.f.triggers]]\nsource = "sqlite"\ndatabase = "x.db"\n'
    )
    proc = start_feed(project)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "triggers[0].table" in lines[0] and "Traceback" not in err.decode()


def test_sigterm_stops_it_promptly(project: Path, redis_url: str) -> None:
    make_project(project)
    app_db(project / "app.db")
    proc = start_feed(project)
    wait_until(lambda: _triggers(project) > 0, what="the capture triggers")
    started = time.monotonic()
    out, _err = stop(proc)
    assert proc.returncode == 0 and time.monotonic() - started < 5
    assert b"capturing changes of table 'items'" in out


def _triggers(project: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(project / "app.db")
    try:
        return conn.execute("SELECT count(*) FROM sqlite_master WHERE type='trigger'").fetchone()[0]
    finally:
        conn.close()


def test_sigkill_right_after_publishing_neither_loses_nor_duplicates(
    project: Path, r: redis.Redis, redis_url: str
) -> None:
    make_project(project, batch_size=10)
    app = app_db(project / "app.db")
    proc = start_feed(project, **{FAULT_ENV: "after-publish"})
    wait_until(lambda: _triggers(project) > 0, what="the capture triggers")
    with app:  # one transaction: the first batch is full
        app.execute("BEGIN")
        app.executemany("INSERT INTO items(name) VALUES (?)", [(str(i),) for i in range(25)])
    proc.wait(30)
    stop(proc)
    assert proc.returncode == 9, "the fault hook killed it after the batch and cursor were stored"
    assert [len(e["payload"]["Records"]) for e in queued_events(r)] == [10]

    proc = start_feed(project)
    try:
        time.sleep(1.0)  # a restarted feed must wait for the in-flight batch, not publish again
        assert len(queued_events(r)) == 1
        consumer = Consumer(redis_url, lambda payload: None)
        consumer.start()
        try:
            wait_until(lambda: len(delivered(consumer)) >= 25, what="25 records")
            time.sleep(0.3)
        finally:
            consumer.stop()
        names = [x["dynamodb"]["NewImage"]["name"]["S"] for x in delivered(consumer)]
        assert names == [str(i) for i in range(25)]
    finally:
        stop(proc)


def test_sigkill_at_random_moments_many_times(project: Path, r: redis.Redis, redis_url: str) -> None:
    make_project(project, batch_size=7)
    app = app_db(project / "app.db")
    total = 300
    stop_writing = threading.Event()

    def write() -> None:
        conn = app_db(project / "app.db", schema="")
        for i in range(total):
            if stop_writing.is_set():
                break
            conn.execute("INSERT INTO items(name) VALUES (?)", (str(i),))
            time.sleep(0.02)  # spread the writes over the kills
        conn.close()

    consumer = Consumer(redis_url, lambda payload: None)
    consumer.start()
    writer = threading.Thread(target=write)
    rng = random.Random(5)
    proc = None
    try:
        proc = start_feed(project)
        wait_until(lambda: _triggers(project) > 0, what="the capture triggers")
        stop(proc)
        writer.start()
        for _ in range(20):
            proc = start_feed(project)
            time.sleep(rng.uniform(0.3, 1.0))  # a fresh interpreter takes about half a second to start
            proc.kill()
            proc.communicate(timeout=10)
        writer.join(60)
        proc = start_feed(project)
        wait_until(lambda: len(delivered(consumer)) >= total, timeout=60, what=f"{total} records")
        time.sleep(0.5)
    finally:
        stop_writing.set()
        if writer.is_alive():
            writer.join(10)
        if proc is not None:
            stop(proc)
        consumer.stop()
    names = [int(x["dynamodb"]["NewImage"]["name"]["S"]) for x in delivered(consumer)]
    assert names == list(range(total)), "every change exactly once, in order"
    assert app.execute("SELECT count(*) FROM items").fetchone()[0] == total


def test_sqlite3_shell_and_another_process_write_at_once(project: Path, redis_url: str) -> None:
    make_project(project)
    app_db(project / "app.db").close()
    consumer = Consumer(redis_url, lambda payload: None)
    consumer.start()
    try:
        shell_and_python_writers(project, consumer)
        proc = start_feed(project)  # a restart re-delivers none of them
        time.sleep(1.5)
        stop(proc)
    finally:
        consumer.stop()
    assert len(delivered(consumer)) == 650


def shell_and_python_writers(project: Path, consumer: Consumer) -> None:
    proc = start_feed(project)
    try:
        wait_until(lambda: _triggers(project) > 0, what="the capture triggers")
        write_acceptance_changes(project / "app.db")
        wait_until(lambda: len(delivered(consumer)) >= 650, timeout=60, what="650 records")
        time.sleep(0.5)
    finally:
        stop(proc)
    assert_acceptance_records(delivered(consumer))
