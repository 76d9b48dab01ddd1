"""The take script against a real Redis: what it writes is what RQ's own worker code writes at a start
(the end of a job is compared with RQ's in tests/test_rq_contract.py)."""

from __future__ import annotations

import datetime
import random
import time
from pathlib import Path

import pytest
import redis
from rq import SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import utcformat, utcparse

from broker import scripts
from broker.envelope import Event
from broker.queues import Publisher, function_queue, rq_timeout, taking_key
from broker.registry import load_registry
from workers.taking import Taker

WORKER = "host|0123abcd.echo.4242"


@pytest.fixture
def setup(project: Path, r: redis.Redis) -> tuple[Publisher, SimpleWorker, Taker]:
    (project / "lambdalite.toml").write_text('[functions.echo]\nhandler = "m.handler"\ntimeout = 7\n')
    registry = load_registry(project / "lambdalite.toml")
    queue = function_queue(r, "echo")
    worker = SimpleWorker([queue], connection=r, name=WORKER, serializer=JSONSerializer)
    probe = Job("ttl", connection=r, serializer=JSONSerializer)
    probe.timeout = rq_timeout(registry.get("echo"))
    taker = Taker(r, queue, WORKER, worker.key, worker.executions_key, taking_key(WORKER),
                  worker.get_heartbeat_ttl(probe))
    return Publisher(r, registry), worker, taker


def snapshot(r: redis.Redis, job_id: str, execution_id: str) -> tuple[dict[str, object], dict[str, float]]:
    """What a start wrote for one job, its ids and times made comparable: what must be the same, and
    lifetimes and scores in seconds from now (the same within a second or two)."""
    def plain(v: bytes) -> str:
        return v.decode().replace(job_id, "JOB").replace(execution_id, "EXEC")

    now = time.time()
    execution = {plain(k): plain(v) for k, v in r.hgetall(f"rq:execution:{job_id}:{execution_id}").items()}
    for field in ("created_at", "last_heartbeat"):
        assert abs(float(execution.pop(field)) - now) < 5
    job = {f: v.decode() for f in ("status", "worker_name", "started_at", "last_heartbeat")
           if (v := r.hget(f"rq:job:{job_id}", f)) is not None}
    for field in ("started_at", "last_heartbeat"):
        stamp = job.pop(field)
        assert abs(utcparse(stamp).timestamp() - now) < 5 and stamp == utcformat(utcparse(stamp))
    worker = {k.decode(): v.decode() for k, v in r.hgetall(f"rq:worker:{WORKER}").items()}
    assert abs(utcparse(worker["last_heartbeat"]).timestamp() - now) < 5
    registries = r.zrange("rq:wip:lambdalite.echo", 0, -1, withscores=True) + r.zrange(
        f"rq:executions:{job_id}", 0, -1, withscores=True)
    mine = (m for m in registries if job_id.encode() in m[0] or m[0] == execution_id.encode())
    seconds = {f"score {plain(m)}": s - now for m, s in mine}
    seconds |= {f"ttl {plain(k.encode())}": r.ttl(k) for k in (
        f"rq:execution:{job_id}:{execution_id}", f"rq:executions:{job_id}", f"rq:worker:{WORKER}",
        f"rq:worker:{WORKER}:executions")}
    same = {
        "execution": execution, "job": job, "job ttl": r.ttl(f"rq:job:{job_id}"), "worker state": worker["state"],
        "worker executions": sorted(plain(m) for m in r.smembers(f"rq:worker:{WORKER}:executions")),
        "taking": r.lrange(taking_key(WORKER), 0, -1), "timed": sorted(seconds),
    }
    return same, seconds


def test_the_take_script_writes_the_start_rqs_own_worker_writes(
        setup: tuple[Publisher, SimpleWorker, Taker], r: redis.Redis) -> None:
    publisher, worker, taker = setup
    ours, theirs = Event("echo", {"n": 1}), Event("echo", {"n": 2})
    publisher.publish_many([ours, theirs])
    r.hset(f"rq:worker:{WORKER}", "state", "idle")
    r.expire(f"rq:job:{ours.id}", 100)  # the start makes a job's hash lasting, as RQ's does
    r.expire(f"rq:job:{theirs.id}", 100)

    assert r.lmove("rq:queue:lambdalite.echo", taking_key(WORKER)) == ours.id.encode()
    started = taker.start(ours.id)
    assert started is not None and started.job_id == ours.id
    assert abs(started.at.timestamp() - time.time()) < 5
    assert Job.fetch(ours.id, connection=r, serializer=JSONSerializer).get_status() == "started"
    ours_written = snapshot(r, ours.id, started.execution_id)

    r.hset(f"rq:worker:{WORKER}", "state", "idle")
    r.delete(f"rq:worker:{WORKER}:executions")
    r.zrem("rq:wip:lambdalite.echo", f"{ours.id}:{started.execution_id}")
    assert r.lmove("rq:queue:lambdalite.echo", taking_key(WORKER)) == theirs.id.encode()
    job = Job.fetch(theirs.id, connection=r, serializer=JSONSerializer)
    # RQ's own start, by its worker's own code: the main worker's (the execution, the state) and the
    # work horse's (the heartbeats, the job's start); RQ's intermediate list is lambdalite's taking list.
    execution = worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    r.lrem(taking_key(WORKER), 1, job.id)
    same, seconds = snapshot(r, theirs.id, execution.id)
    assert ours_written[0] == same
    assert all(abs(ours_written[1][k] - seconds[k]) <= 2 for k in seconds), (ours_written[1], seconds)


def test_what_the_take_script_declines_or_finds_left_behind(
        setup: tuple[Publisher, SimpleWorker, Taker], r: redis.Redis) -> None:
    publisher, _, taker = setup
    taking = taking_key(WORKER)
    assert taker.wait(1) == (None, None), "nothing came"
    for bad in ("bad id!", "no-such-job"):
        r.rpush("rq:queue:lambdalite.echo", bad)
        assert taker.wait(1) == (bad.encode(), None), "declined: nothing written"
        assert r.lpop(taking) == bad.encode()
    r.set("rq:job:a-string", "x")
    assert taker.start("a-string") is None and r.type("rq:job:a-string") == b"string"
    left = Event("echo", {"n": 3})
    publisher.publish(left)
    r.lmove("rq:queue:lambdalite.echo", taking)  # taken by an earlier step that went no further
    raw, started = taker.wait(1)
    assert raw is None and started is not None and started.job_id == left.id, "found left behind: started"
    assert r.llen(taking) == 0
    r.script_flush()  # a restarted Redis: declined once (the worker's careful path starts it), then known again
    publisher.publish_many([Event("echo", {}), Event("echo", {})])
    assert taker.wait(1)[1] is None and r.lpop(taking)
    assert taker.wait(1)[1] is not None


def test_the_scripts_utc_is_rqs_timestamp_format(r: redis.Redis) -> None:
    utc = scripts.load("utc_of", Path(__file__).with_name("lua"))
    leap_days_and_ends = [0, 951782400, 1709164800, 4107542399, 4102444800]
    for sec in leap_days_and_ends + [random.randrange(0, 4_102_444_800) for _ in range(300)]:
        usec = random.randrange(1_000_000)
        expected = utcformat(datetime.datetime.fromtimestamp(sec, datetime.UTC).replace(microsecond=usec))
        assert utc(r, keys={}, args={"sec": sec, "usec": usec}).decode() == expected, sec


def test_an_interrupt_ends_a_wait_at_once_and_a_later_wait_as_it_begins(
        setup: tuple[Publisher, SimpleWorker, Taker], r: redis.Redis) -> None:
    import threading

    publisher, _, taker = setup
    timer = threading.Timer(0.3, taker.interrupt)  # as a stop signal's handler would, mid-wait
    timer.start()
    began = time.monotonic()
    assert taker.wait(5) == (None, None)
    assert 0.25 < time.monotonic() - began < 2, "ended by the interrupt, not by its 5 s timeout"
    began = time.monotonic()
    assert taker.wait(5) == (None, None)
    assert time.monotonic() - began < 1, "a wait after the interrupt ends as it begins"
    job_id = publisher.publish(Event("echo", {}))
    raw, started = taker.wait(5)
    assert raw == job_id.encode() and started is not None, "a job already queued is still taken"
