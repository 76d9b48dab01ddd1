"""Garbage in the keys the scaler and its workers read: every bad entry is reported in one log line
naming its key and ends dead-lettered, failed or moved aside; the events beside it still run.

The real scaler (and through it real workers) against a real Redis, the garbage written straight
into Redis the way a foreign program sharing it could.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from broker import deadletter, delayed, results
from broker.envelope import Event
from broker.queues import RUNNER, Publisher, taking_key
from broker.registry import load_registry
from broker.stats import alive_key
from tests.stack import Scaler, cli, invoke, status
from tests.waiting import wait_until
from workers import recovery

FIXTURES = Path(__file__).parent / "fixtures"
QUEUE = "rq:queue:lambdalite.echo"

TOML = """
[functions.echo]
handler = "hostile.echo"
retries = 0
[functions.boom]
handler = "hostile.boom"
retries = 1
retry_backoff = 0.05
[functions.rec]
handler = "hostile.record"
retries = 1
retry_backoff = 0.05
"""


@pytest.fixture
def publisher(project: Path, r: redis.Redis) -> Publisher:
    shutil.copy(FIXTURES / "hostile.py", project / "hostile.py")
    (project / "lambdalite.toml").write_text(TOML)
    return Publisher(r, load_registry(project / "lambdalite.toml"))


def lines_naming(text: str, key: str) -> list[str]:
    return [line for line in text.splitlines() if key in line]


def clean(out: str) -> None:
    """No traceback in a process's log but handlers' own (each follows its ``[ERROR]`` line)."""
    assert out.count("Traceback (most recent call last)") == out.count("[ERROR] "), out
    assert "exited abnormally" not in out and "failed; carrying on" not in out, out


def test_unreadable_jobs_never_stop_a_worker_and_the_events_around_them_run(
        project: Path, redis_url: str, r: redis.Redis, publisher: Publisher) -> None:
    first = Event("echo", {"n": 1}, invocation_type="RequestResponse")
    publisher.publish(first)
    r.rpush(QUEUE, "no-such-job")  # an id whose job hash does not exist
    r.set("rq:job:string-job", "x")  # a job "hash" that is a string (WRONGTYPE)
    r.rpush(QUEUE, "string-job")
    r.hset("rq:job:not-json", mapping={"data": "{not json", "status": "queued"})
    r.rpush(QUEUE, "not-json")
    salvaged = Event("echo", {"n": "salvaged"})  # a sound envelope in a hash RQ cannot read
    publisher.publish(salvaged)
    r.hset(f"rq:job:{salvaged.id}", "status", "bogus")
    sync = Event("echo", {"n": "sync"}, invocation_type="RequestResponse")
    publisher.publish(sync)
    r.hset(f"rq:job:{sync.id}", "created_at", "yesterday")
    foreign = Queue("lambdalite.echo", connection=r, serializer=JSONSerializer).enqueue_call(
        RUNNER, args=({"v": 1, "function": "echo"},))  # RQ reads it; not an envelope
    r.rpush(QUEUE, b"\xff\xfe")  # not even a job id
    last = Event("echo", {"n": 2}, invocation_type="RequestResponse")
    publisher.publish(last)

    with Scaler(project) as scaler:
        assert results.wait(r, first.id, 30).ok
        assert results.wait(r, last.id, 30).ok, "the events queued behind the garbage ran"
        bad = results.wait(r, sync.id, 10)
        assert bad is not None and bad.status == "failed", "a synchronous caller gets an answer, not a hang"
        assert bad.error["errorType"] == "Runtime.InvalidJob" and f"rq:job:{sync.id}" in bad.error["errorMessage"]
        # Several workers share the queue: the garbage taken before the last event may be settled after it.
        wait_until(lambda: len(deadletter.entries(r, "echo")) >= 4, what="the four dead letters")
        dead = {e["id"]: e for e in deadletter.entries(r, "echo")}
        assert set(dead) == {"string-job", "not-json", salvaged.id, foreign.id}
        assert {e["reason"] for e in dead.values()} == {"InvalidJob"}
        assert dead[salvaged.id]["event"]["payload"] == {"n": "salvaged"}, "the event itself is kept"

        replay = cli(project, "dlq", "replay", "echo")
        assert replay.returncode == 0 and "Traceback" not in replay.stderr, replay.stderr
        assert json.loads(replay.stdout) == {"replayed": [salvaged.id]}
        assert len(replay.stderr.strip().splitlines()) == 3, "one line per entry with no event to replay"
        wait_until(lambda: status(project)["echo"]["succeeded"] == 3, what="the replayed event")
        row = status(project)["echo"]
        assert (row["failed"], row["dead"], row["queued"], row["running"]) == (5, 4, 0, 0)
    out = scaler.output()
    clean(out)
    for key in ("rq:job:no-such-job", "rq:job:string-job", "rq:job:not-json", f"rq:job:{salvaged.id}",
                f"rq:job:{sync.id}", f"rq:job:{foreign.id}"):
        assert len(lines_naming(out, key)) == 1, (key, lines_naming(out, key))
    assert len(lines_naming(out, r"held b'\xff\xfe'")) == 1
    assert r.llen(QUEUE + ":intermediate") == 0, "nothing left half-taken"
    assert r.keys("lambdalite:quarantine:rq:job:string-job:*") and r.keys("lambdalite:quarantine:rq:job:not-json:*")


def test_a_job_id_rq_refuses_is_settled_and_leaves_nothing_taken(
        project: Path, redis_url: str, r: redis.Redis, publisher: Publisher) -> None:
    r.rpush(QUEUE, "bad id!")  # UTF-8 and no colon, but not an id RQ accepts: letters, digits, _ and -
    r.hset("rq:job:bad id!", mapping={"data": "{not a job", "status": "queued"})
    after = Event("echo", {"n": 1}, invocation_type="RequestResponse")
    publisher.publish(after)
    with Scaler(project) as scaler:
        assert results.wait(r, after.id, 30).ok
        wait_until(lambda: deadletter.entries(r, "echo"), what="the dead letter")
    assert [e["id"] for e in deadletter.entries(r, "echo")] == ["bad id!"]
    out = scaler.output()
    clean(out)
    assert len(lines_naming(out, "rq:job:bad id!")) == 1, out
    assert all(r.llen(k) == 0 for k in r.keys("lambdalite:taking:*")), "nothing left half-taken"


SCALER_KEYS = {  # what the scaler reads every step or so, as the wrong type
    QUEUE: "list", "rq:wip:lambdalite.echo": "zset", "lambdalite:slots:echo": "hash",
    "lambdalite:scaler:echo": "hash", delayed.DELAYED_KEY: "zset",
}
WORKER_KEYS = {  # what workers write: their registrations, RQ's registries, lambdalite's outcomes
    "rq:workers": "set", "rq:workers:lambdalite.echo": "set", "rq:finished:lambdalite.echo": "zset",
    "rq:failed:lambdalite.boom": "zset", "lambdalite:stats:echo": "hash", "lambdalite:dlq:boom": "hash",
}


def test_keys_of_the_wrong_type_are_moved_aside_and_work_carries_on(
        project: Path, redis_url: str, r: redis.Redis, publisher: Publisher) -> None:
    r.set(alive_key("ghost"), 1, ex=60)  # a live scaler whose worker count is garbage
    r.hset("lambdalite:slots:echo", "ghost", "lots")
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="0.5") as scaler:
        assert invoke(redis_url, project, "echo").ok
        assert "not a number of workers" in scaler.output()
        wait_until(lambda: status(project)["echo"]["workers"] == 0, what="the idle worker's retirement")
        for key in {**SCALER_KEYS, **WORKER_KEYS}:
            r.delete(key)
            r.set(key, "garbage")
        wait_until(lambda: all(lines_naming(scaler.output(), f"redis key {k} holds a string") for k in SCALER_KEYS),
                   what="the scaler's repairs")
        assert invoke(redis_url, project, "echo").ok, "a new worker registers, runs and records"
        doomed = Event("boom", {"x": 1})
        publisher.publish(doomed)
        wait_until(lambda: deadletter.entries(r, "boom"), what="the dead letter (after a delayed retry)")
        done = cli(project, "status", "--json")
        assert done.returncode == 0 and done.stderr == "", done.stderr
        row = json.loads(done.stdout)["functions"]
        assert row["echo"]["succeeded"] == 1 and row["boom"]["dead"] == 1 and row["boom"]["retried"] == 1
    out = scaler.output()
    clean(out)
    for key, kind in {**SCALER_KEYS, **WORKER_KEYS}.items():
        lines = lines_naming(out, f"redis key {key} holds a string, not a {kind}; moved to")
        assert len(lines) == 1, (key, lines)
        assert r.keys(f"lambdalite:quarantine:{key}:*"), key


def test_started_jobs_of_garbled_or_unknown_workers_are_settled_at_start(
        project: Path, redis_url: str, r: redis.Redis, publisher: Publisher) -> None:
    log = project / "calls.log"
    wip = "rq:wip:lambdalite.rec"

    def started(fields: dict[str, str], lease: float) -> Event:
        """An event that looks taken by a worker that is gone (the job in the started registry)."""
        event = Event("rec", {"log": str(log), "seconds": 0})
        publisher.publish(event)
        r.lrem("rq:queue:lambdalite.rec", 0, event.id)
        r.zadd(wip, {f"{event.id}:exec": time.time() + lease})
        r.hset(f"rq:job:{event.id}", mapping={"status": "started", **fields})
        return event

    garbled = started({"worker_name": "not a lambdalite worker"}, 600)  # no such RQ worker key
    nameless = started({}, -1)  # no worker name; RQ's lease on it ran out
    unreadable = started({"worker_name": "box|gone.rec.1", "created_at": "yesterday"}, 600)
    r.zadd(wip, {"no-colon": 1, b"\xff:\xfe": 1})
    with Scaler(project) as scaler:
        wait_until(lambda: len(calls(log)) == 3, what="the three events run again")
        wait_until(lambda: r.zcard(wip) == 0, what="an empty started registry")
    assert sorted(calls(log)) == sorted([garbled.id, nameless.id, unreadable.id])
    row = status(project)["rec"]
    assert (row["succeeded"], row["failed"], row["retried"], row["running"]) == (3, 3, 3, 0)
    out = scaler.output()
    clean(out)
    assert len(lines_naming(out, f"rq:job:{unreadable.id}")) == 1
    assert len(lines_naming(out, "'no-colon'")) == 1 and len(lines_naming(out, r"b'\xff:\xfe'")) == 1


def calls(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [json.loads(line)["id"] for line in log.read_text().splitlines() if '"start"' in line]


def test_a_job_taken_but_never_started_goes_back_to_the_front_of_its_queue(
        project: Path, r: redis.Redis, publisher: Publisher) -> None:
    """A worker killed between taking a job (BLMOVE to its taking list) and starting it."""
    taken, waiting = Event("echo", {"n": 1}), Event("echo", {"n": 2})
    publisher.publish_many([taken, waiting])
    name = "host|0ldrun00.echo.999999"
    r.sadd(f"rq:workers:{QUEUE.removeprefix('rq:queue:')}", f"rq:worker:{name}")
    r.lmove(QUEUE, taking_key(name))
    registry = publisher.registry
    assert recovery.recover(r, registry, is_dead=lambda worker: False) == 0, "a live worker's job stays"
    assert r.lrange(QUEUE, 0, -1) == [waiting.id.encode()]
    assert recovery.recover(r, registry, is_dead=lambda worker: worker == name) == 1
    assert r.lrange(QUEUE, 0, -1) == [taken.id.encode(), waiting.id.encode()], "back at the front"
    assert r.llen(taking_key(name)) == 0
