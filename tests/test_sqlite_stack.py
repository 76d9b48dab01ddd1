"""End to end with the real stack: the scaler and its workers, the feed process, the sqlite3 shell."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlite_support import app_db, wait_until

from tests.stack import Scaler, env

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
        other = None
        try:
            wait_until(lambda: captured(project), timeout=60, what="the capture triggers")
            inserts = "".join(f"INSERT INTO items VALUES ({i}, 'shell{i}', {i});\n" for i in range(1, 301))
            script = (".timeout 10000\nBEGIN;\n" + inserts + "COMMIT;\n"
                      "UPDATE items SET n = n + 1000 WHERE id <= 100;\n"
                      "DELETE FROM items WHERE id > 250 AND id <= 300;\n")
            other = subprocess.Popen([sys.executable, "-c", (
                "import sqlite3\n"
                f"c = sqlite3.connect({str(project / 'app.db')!r}, isolation_level=None, timeout=10)\n"
                "for i in range(200):\n"
                "    c.execute('INSERT INTO items VALUES (?, ?, ?)', (10000 + i, 'py', i))\n"
            )])
            shell = subprocess.run(["sqlite3", str(project / "app.db")], input=script.encode(),
                                   capture_output=True, timeout=60)
            assert shell.returncode == 0, shell.stderr
            assert other.wait(60) == 0
            wait_until(lambda: len(records(project)) >= 650, timeout=90, what="650 records")
            time.sleep(1.0)
        finally:
            if other is not None and other.poll() is None:
                other.kill()
                other.wait()
            feed.stop()
    got = records(project)
    counts: dict[str, int] = defaultdict(int)
    per_key: dict[int, list[str]] = defaultdict(list)
    for rec in got:
        counts[rec["eventName"]] += 1
        per_key[int(rec["dynamodb"]["Keys"]["id"]["N"])].append(rec["eventName"])
    assert dict(counts) == {"INSERT": 500, "MODIFY": 100, "REMOVE": 50}
    for key, ops in per_key.items():
        expected = ["INSERT", "MODIFY"] if key <= 100 else ["INSERT", "REMOVE"] if key <= 300 and key > 250 else [
            "INSERT"]
        assert ops == expected, (key, ops)

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
