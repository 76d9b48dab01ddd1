"""A full disk: under the redis-server's append-only file, and under the invocations' TMPDIR.

Redis that cannot write its append-only file refuses writes (MISCONF). Every process then logs it,
holds its events (sources keep their cursor and manifest where they were; a worker keeps the job
it runs) and carries on; once there is room again everything flows, each event once. An
invocation that cannot get a TMPDIR fails alone, in Lambda's shape, and its worker carries on.
The disks are real (a small tmpfs, see ``diskkit``); so are every process and the HTTP client.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from diskkit import FullDisk

from broker import results, scripts
from broker.conditional import Conditional
from broker.connection import RedisRefusesWrites, connect, transact
from broker.envelope import Event
from broker.queues import Publisher
from broker.registry import load_registry
from sources.files.manifest import Manifest
from sources.sqlite.sqlite_cursor import cursor_key
from tests.stack import ROOT, Scaler, cli, env, free_port, invoke, publish, status
from tests.waiting import wait_until

ALWAYS = Conditional(scripts.load("always", Path(__file__).with_name("lua")))  # a condition that always holds

pytestmark = pytest.mark.timeout(180)

SINK = '''
import json, os, time


def handler(event, context):
    """Notes each event it gets in the file $SINK; sleeps event["seconds"] first if asked."""
    def note(**fields):
        with open(os.environ["SINK"], "a") as f:
            f.write(json.dumps({"id": context.aws_request_id, **fields}) + "\\n")

    note(phase="start")
    if isinstance(event, dict) and "seconds" in event:
        time.sleep(event["seconds"])
    note(phase="end", event=event)
    return {"ok": True}
'''

TOML = """
[functions.sink]
handler = "sink.handler"
timeout = 30
[[functions.sink.triggers]]
source = "files"
bucket = "uploads"
[[functions.sink.triggers]]
source = "sqlite"
database = "app.db"
table = "items"
[[functions.sink.triggers]]
source = "http"
path = "/hooks/in"
mode = "async"

[functions.slow]
handler = "sink.handler"
timeout = 30
"""


class Process:
    """``python -m MODULE`` in the project folder, its output in a file, stopped by SIGTERM."""

    def __init__(self, project: Path, module: str, **settings: str) -> None:
        self.log = project / f"{module}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", module], cwd=project, env=env(**settings),
                                         stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def sink_calls(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def delivered(path: Path) -> dict[str, list[Any]]:
    """What each kind of event carried, in the order the handler finished them."""
    out: dict[str, list[Any]] = {"files": [], "sqlite": [], "http": [], "slow": []}
    for call in sink_calls(path):
        if call["phase"] != "end":
            continue
        event = call["event"]
        records = event.get("Records", [{}]) if isinstance(event, dict) else [{}]
        if records[0].get("eventSource") == "aws:s3":
            out["files"] += [r["s3"]["object"]["key"] for r in records]
        elif records[0].get("eventSource") == "aws:dynamodb":
            out["sqlite"] += [r["dynamodb"]["NewImage"]["name"]["S"] for r in records]
        elif "routeKey" in event:
            out["http"].append(json.loads(event["body"]))
        else:
            out["slow"].append(call["id"])
    return out


@pytest.fixture
def var_disk(project: Path) -> Iterator[FullDisk]:
    disk = FullDisk(project / "var")
    try:
        yield disk
    finally:
        disk.close()


def refuse_writes(disk: FullDisk, client: redis.Redis) -> str:
    """Fill the disk, then write until Redis notices (its first failed append): returns its refusal."""
    disk.fill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.set("lambdalite:test:probe", "x" * 1000)
        except RedisRefusesWrites as e:
            return str(e)
        time.sleep(0.05)
    raise AssertionError("redis still takes writes on a full disk")


def test_a_full_disk_under_redis_holds_every_event_until_there_is_room_again(
        project: Path, var_disk: FullDisk) -> None:
    server = var_disk.redis()
    client = connect(server.url)
    (project / "sink.py").write_text(SINK)
    (project / "lambdalite.toml").write_text(TOML)
    (project / "buckets" / "uploads").mkdir()
    app = sqlite3.connect(project / "app.db", isolation_level=None, timeout=10)
    app.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)")
    sink, port = project / "calls.jsonl", free_port()
    settings = {"LAMBDALITE_REDIS_URL": server.url, "LAMBDALITE_HTTP_PORT": str(port), "SINK": str(sink)}
    names = ("sources.files", "sources.sqlite", "sources.http")
    procs = {name: Process(project, name, **settings) for name in names}
    scaler = Scaler(project, **settings)
    base = f"http://127.0.0.1:{port}"
    try:
        def http_ok() -> bool:
            try:
                return httpx.get(base + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(http_ok, what="the webhook process")
        wait_until(lambda: app.execute("SELECT count(*) FROM sqlite_master WHERE type='trigger'").fetchone()[0] > 0,
                   what="the capture triggers")
        wait_until(lambda: "watching" in procs["sources.files"].output(), what="the files watcher")
        (project / "buckets" / "uploads" / "a.jpg").write_bytes(b"a")
        app.execute("INSERT INTO items(name) VALUES ('r1')")
        assert httpx.post(base + "/hooks/in", json={"n": 1}, timeout=10).status_code == 202
        wait_until(lambda: [len(v) for v in delivered(sink).values()] == [1, 1, 1, 0], what="the first three events")

        slow = Event("slow", {"seconds": 2})
        Publisher(client, load_registry(project / "lambdalite.toml")).publish(slow)
        wait_until(lambda: any(c["id"] == slow.id for c in sink_calls(sink)), what="the slow invocation's start")

        refusal = refuse_writes(var_disk, client)
        assert "MISCONF" in refusal
        (project / "buckets" / "uploads" / "b.jpg").write_bytes(b"b")
        app.execute("INSERT INTO items(name) VALUES ('r2')")
        refused = httpx.post(base + "/hooks/in", json={"n": 2}, timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", "no 2xx for an unstored event"
        assert httpx.get(base + "/healthz", timeout=10).status_code == 503
        cursor = cursor_key("sink", (project / "app.db").resolve(), "items")
        last = client.hget(cursor, "last")
        time.sleep(3)  # the slow handler ends meanwhile; its worker cannot record that yet
        assert [len(v) for v in delivered(sink).values()] == [1, 1, 1, 1], "it ran; nothing else did"
        assert results.fetch(client, slow.id) is None and client.zcard("rq:wip:lambdalite.slow") == 1
        assert client.hkeys(Manifest.hash_key("uploads")) == [b"a.jpg"], "the manifest stays where it was"
        assert client.hget(cursor, "last") == last, "the cursor stays where it was"
        assert client.llen("rq:queue:lambdalite.sink") == 0
        assert all(p.proc.poll() is None for p in procs.values()) and scaler.proc.poll() is None

        var_disk.free()
        outcome = results.wait(client, slow.id, 30)
        assert outcome is not None and outcome.ok, "the held outcome is recorded once there is room"
        wait_until(lambda: delivered(sink)["files"] == ["a.jpg", "b.jpg"], what="the file written while full")
        wait_until(lambda: delivered(sink)["sqlite"] == ["r1", "r2"],
                   what="the row written while full")
        wait_until(lambda: httpx.post(base + "/hooks/in", json={"n": 2}, timeout=10).status_code == 202,
                   what="the webhook taking events again")
        wait_until(lambda: delivered(sink)["http"] == [{"n": 1}, {"n": 2}], what="the request sent again")
        time.sleep(1)
        assert delivered(sink) == {"files": ["a.jpg", "b.jpg"], "sqlite": ["r1", "r2"], "http": [{"n": 1}, {"n": 2}],
                                   "slow": [slow.id]}, "each event once"
    finally:
        if scaler.proc.poll() is None:
            scaler.stop()
        for p in procs.values():
            p.stop()
        app.close()
        client.close()
    logs = {name: p.output() for name, p in procs.items()} | {"workers.scaler": scaler.output()}
    for name, text in logs.items():
        assert "Traceback" not in text, (name, text)
        assert "MISCONF Errors writing to the AOF file" in text, (name, text)
    assert "holding the job" in logs["workers.scaler"] and "failed; carrying on" not in logs["workers.scaler"]


@pytest.mark.parametrize("how", ["as available", "rlimit"])
def test_redis_refusing_writes_is_an_outage_and_applies_nothing(project: Path, how: str) -> None:
    disk = FullDisk(project / "var", mount=False if how == "rlimit" else None)
    try:
        server = disk.redis()
        client = connect(server.url)
        (project / "lambdalite.toml").write_text('[functions.f]\nhandler = "mod.handler"\n')
        publisher = Publisher(client, load_registry(project / "lambdalite.toml"))
        publisher.publish(Event("f", {"n": 0}))
        refusal = refuse_writes(disk, client)
        reason = "File too large" if disk.how == "rlimit" else "No space left on device"
        assert refusal == f"MISCONF Errors writing to the AOF file: {reason}"

        def cursor(pipe: Any) -> None:
            pipe.hset("lambdalite:test:cursor", "last", 1)

        with pytest.raises(RedisRefusesWrites):
            publisher.publish_many([Event("f", {"n": 1})], also=cursor)
        assert client.llen("rq:queue:lambdalite.f") == 1 and not client.exists("lambdalite:test:cursor"), \
            "all or nothing: neither the event nor the source's own bookkeeping"
        with pytest.raises(RedisRefusesWrites):  # the same for writes made under a condition (one script)
            publisher.publish_if(ALWAYS, [], [], [Event("f", {"n": 1})], also=cursor)
        assert client.llen("rq:queue:lambdalite.f") == 1 and not client.exists("lambdalite:test:cursor")
        with pytest.raises(RedisRefusesWrites):  # the worker's record of a job's end goes this way
            transact(client, [("HSET", "lambdalite:test:cursor", "last", 1), ("RPUSH", "rq:queue:lambdalite.f", "x")])
        assert client.llen("rq:queue:lambdalite.f") == 1 and not client.exists("lambdalite:test:cursor")
        with pytest.raises(RedisRefusesWrites):
            client.ping()
        done = cli(project, "invoke", "f", "--async", LAMBDALITE_REDIS_URL=server.url)
        assert done.returncode == 1 and done.stderr.count("\n") == 2, done.stderr
        assert done.stderr.startswith("lambdalite: redis refuses writes (MISCONF") and reason in done.stderr
        assert done.stderr.splitlines()[1].startswith("lambdalite: redis unavailable at ")
        shown = cli(project, "status", "--json", LAMBDALITE_REDIS_URL=server.url)
        assert shown.returncode == 0 and json.loads(shown.stdout)["functions"]["f"]["queued"] == 1, shown.stderr
        assert shown.stderr.startswith("lambdalite: redis refuses writes (MISCONF") and shown.stderr.count("\n") == 1
        disk.free()
        wait_until(lambda: _writable(client), what="writes accepted again")
        publisher.publish_many([Event("f", {"n": 1})], also=cursor)
        assert client.llen("rq:queue:lambdalite.f") == 2 and client.hget("lambdalite:test:cursor", "last") == b"1"
        client.close()
    finally:
        disk.close()


def _writable(client: redis.Redis) -> bool:
    try:
        return bool(client.set("lambdalite:test:probe", "y"))
    except RedisRefusesWrites:
        return False


def workers_of(scaler: Scaler) -> set[int]:
    return {p.pid for p in psutil.Process(scaler.proc.pid).children()}


def test_an_invocation_without_room_for_its_tmpdir_fails_alone_and_its_worker_carries_on(
        project: Path, redis_url: str) -> None:
    (project / "hostile.py").write_text((ROOT / "tests" / "fixtures" / "hostile.py").read_text())
    (project / "lambdalite.toml").write_text(
        '[functions.echo]\nhandler = "hostile.echo"\nretries = 2\nretry_backoff = 3\n')
    tmp = FullDisk(project / "tmp", size="1m", inodes=64)
    try:
        # A TMPDIR per invocation (the behaviour where no private /tmp can be made) is what fails here.
        with Scaler(project, TMPDIR=str(tmp.folder), LAMBDALITE_IDLE_TIMEOUT="60",
                    LAMBDALITE_PRIVATE_TMP="0") as scaler:
            assert invoke(redis_url, project, "echo").ok
            workers = workers_of(scaler)
            tmp.fill()
            failed = invoke(redis_url, project, "echo")
            assert failed.status == "failed" and failed.error["errorType"] == "Runtime.EphemeralStorageUnavailable"
            message = failed.error["errorMessage"]
            assert "cannot create the invocation's TMPDIR in " + str(tmp.folder) in message, message
            if tmp.mounted:
                assert message.endswith("No space left on device"), message
            queued = publish(redis_url, project, "echo", {"n": 1})
            wait_until(lambda: status(project)["echo"]["retried"] == 1, what="the asynchronous event's first failure")
            tmp.free()
            outcome = results.wait(connect(redis_url), queued.id, 30)
            assert outcome is not None and outcome.ok and outcome.attempts == 2, outcome
            assert invoke(redis_url, project, "echo").ok
            assert workers_of(scaler) == workers, "the same worker served every invocation"
            left = [p for p in tmp.folder.glob("lambdalite-*/tmp/*")] + [
                p for p in tmp.folder.iterdir() if p.name.startswith("lambdalite-") and ".env-" not in p.name]
            assert left == [], "no TMPDIR left"
    finally:
        tmp.close()
    out = scaler.output()
    assert "Traceback" not in out and "exited abnormally" not in out, out
    assert out.count("Status: error") == 2, "each invocation without a TMPDIR ends with its own REPORT line"
