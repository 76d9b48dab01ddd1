"""End to end with the real stack: the scaler and its workers, the feed process, the sqlite3 shell."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlite_support import app_db, assert_acceptance_records, write_acceptance_changes

from tests.stack import Scaler, env
from tests.waiting import wait_until

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.timeout(240)

CONFIG = """
[functions.stream]
handler = "stream_recorder.handler"
timeout = 30
retries = 2
[[functions.stream.triggers]]
source = "sqlite"
database = "app.db"
table = "items"
batch_size = 100
"""


class FeedProcess:
    def __init__(self, project: Path) -> None:
        self.log = (project / f"feed-{time.monotonic_ns()}.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "sources.sqlite"], cwd=project, env=env(),
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def captured(project: Path) -> bool:
    conn = sqlite3.connect(project / "app.db")
    try:
        return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] > 0
    finally:
        conn.close()


def delivered(project: Path) -> list[dict[str, Any]]:
    path = project / "delivered.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def records(project: Path) -> list[dict[str, Any]]:
    return [rec for batch in delivered(project) for rec in batch["records"]]


@pytest.fixture
def stack_project(project: Path, redis_url: str) -> Path:
    shutil.copy(FIXTURES / "stream_recorder.py", project / "stream_recorder.py")
    (project / "lambdalite.toml").write_text(CONFIG)
    app_db(project / "app.db").close()
    return project


def test_acceptance_shell_and_a_second_writer_through_the_real_stack(stack_project: Path, r: redis.Redis) -> None:
    project = stack_project
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="60"):
        feed = FeedProcess(project)
        try:
            wait_until(lambda: captured(project), timeout=60, what="the capture triggers")
            write_acceptance_changes(project / "app.db")
            wait_until(lambda: len(records(project)) >= 650, timeout=90, what="650 records")
            time.sleep(1.0)
        finally:
            feed.stop()
    assert_acceptance_records(records(project))

    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="60"):  # a restart of the stack re-delivers nothing
        feed = FeedProcess(project)
        try:
            time.sleep(3)
        finally:
            feed.stop()
    assert len(records(project)) == 650


def test_partial_batch_failure_is_retried_from_the_failed_record(stack_project: Path) -> None:
    project = stack_project
    (project / "fail-once").write_text("")
    app = app_db(project / "app.db", schema="")
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="60"):
        feed = FeedProcess(project)
        try:
            wait_until(lambda: captured(project), timeout=60, what="the capture triggers")
            app.execute("BEGIN")
            app.executemany("INSERT INTO items VALUES (?, 'x', 0)", [(i,) for i in range(1, 6)])
            app.execute("COMMIT")
            wait_until(lambda: len(delivered(project)) >= 2, timeout=60, what="the retried batch")
            time.sleep(0.5)
        finally:
            feed.stop()
    batches = [[int(x["dynamodb"]["Keys"]["id"]["N"]) for x in b["records"]] for b in delivered(project)]
    assert batches == [[1, 2, 3, 4, 5], [2, 3, 4, 5]]
