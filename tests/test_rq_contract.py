"""The contract with RQ (broker.rqlayout): RQ's own code run against what lambdalite writes, on a real
redis-server. A job lambdalite publishes is what RQ's ``Queue.enqueue`` writes and reads back with
``Job.fetch``; a job lambdalite's worker ends is, key by key, what RQ's own ``SimpleWorker`` leaves
for a twin job; a job RQ itself enqueues is taken and run, or refused, as any other. (The start of a
job is compared with RQ's in tests/test_taking.py.) A release of RQ that changes any of it fails here.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import SimpleWorker
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import utcformat, utcparse

from broker import deadletter, results, rqlayout
from broker.envelope import Event
from broker.queues import RUNNER, Publisher, function_queue, job_options
from broker.registry import Registry, load_registry
from broker.rqlayout import COMPRESS_OVER
from tests.stack import Scaler
from tests.waiting import wait_until

TOML = """
[functions.ok]
handler = "contract.ok"
[functions.fail]
handler = "contract.fail"
retries = 0
[functions.quiet]
handler = "contract.ok"
"""
HANDLERS = """
def ok(event, context):
    return {"n": event["n"]}


def fail(event, context):
    raise ValueError("no")
"""
STAMPS = ("created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat")


@pytest.fixture
def registry(project: Path) -> Registry:
    (project / "contract.py").write_text(HANDLERS)
    (project / "lambdalite.toml").write_text(TOML)
    return load_registry(project / "lambdalite.toml")


def fields(r: redis.Redis, job_id: str) -> dict[str, bytes]:
    """A job hash as RQ reads it: what RQ writes empty reads the same absent (``Job.restore``)."""
    return {k.decode(): v for k, v in r.hgetall(rqlayout.job_key(job_id)).items() if v != b""}


# -- a publish --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [10, COMPRESS_OVER * 4], ids=["small-uncompressed", "large-compressed"])
def test_a_job_we_publish_is_the_job_rqs_enqueue_writes(r: redis.Redis, registry: Registry, size: int) -> None:
    fn = registry.get("ok")
    queued = []
    for kind in ("Event", "RequestResponse"):
        ours = Event("ok", {"n": 1, "pad": "x" * size}, invocation_type=kind)
        Publisher(r, registry).publish(ours)
        twin = Event.from_dict({**ours.to_dict(), "id": f"twin-{ours.id}"})
        function_queue(r, "ok").enqueue_call(RUNNER, args=(twin.to_dict(),), **job_options(fn, twin))
        queued += [ours.id.encode(), twin.id.encode()]

        job = Job.fetch(ours.id, connection=r, serializer=JSONSerializer)
        assert (job.func_name, job.kwargs, job.get_status(), job.origin) == (RUNNER, {}, "queued", "lambdalite.ok")
        assert Event.from_dict(job.args[0]) == ours
        assert (job.timeout, job.result_ttl, job.failure_ttl, job.ttl) == (
            int(fn.timeout) + 30, 600 if kind == "RequestResponse" else 0, 7 * 24 * 3600, None)
        assert r.ttl(job.key) == -1, "a queued job lasts until it is taken"

        mine, theirs = fields(r, ours.id), fields(r, twin.id)
        for stamp in ("created_at", "enqueued_at"):
            assert utcformat(utcparse(mine.pop(stamp).decode())) and utcparse(theirs.pop(stamp).decode())
        data_mine, data_theirs = mine.pop("data"), theirs.pop("data")
        assert (data_mine[:1] == b"x") == (size > COMPRESS_OVER), "compressed only when large"  # zlib's header
        payload = [json.loads(zlib.decompress(d) if d[:1] == b"x" else d) for d in (data_mine, data_theirs)]
        payload[1][2][0]["id"] = payload[0][2][0]["id"]  # the twin's own event id
        assert payload[0] == payload[1]
        assert mine.pop("description").replace(ours.id.encode(), b"ID") == theirs.pop("description").replace(
            twin.id.encode(), b"ID")
        assert mine == theirs, "every other field, as RQ's enqueue writes it"
    assert r.lrange(rqlayout.queue_key("lambdalite.ok"), 0, -1) == queued
    assert r.smembers(rqlayout.QUEUES_KEY) == {rqlayout.queue_key("lambdalite.ok").encode()}


def test_the_key_names_are_rqs(r: redis.Redis) -> None:
    queue = Queue("q", connection=r, serializer=JSONSerializer)
    job = Job.create("json.loads", args=("1",), id="J", connection=r, origin="q")
    worker = SimpleWorker([queue], connection=r, name="W")
    assert rqlayout.job_key("J") == job.key and rqlayout.queue_key("q") == queue.key
    assert rqlayout.started_key("q") == queue.started_job_registry.key
    assert rqlayout.finished_key("q") == queue.finished_job_registry.key
    assert rqlayout.failed_key("q") == queue.failed_job_registry.key
    assert rqlayout.canceled_key("q") == queue.canceled_job_registry.key
    assert rqlayout.worker_key("W") == worker.key and rqlayout.worker_executions_key("W") == worker.executions_key
    assert rqlayout.worker_name_of(worker.key.encode()) == "W"
    assert worker.redis_workers_keys == rqlayout.WORKERS_KEY and queue.redis_queues_keys == rqlayout.QUEUES_KEY
    # the layout docs/redis-keys.md lists, as RQ 3.0 spells it
    assert [rqlayout.job_key("J"), rqlayout.queue_key("q"), rqlayout.started_key("q"), rqlayout.finished_key("q"),
            rqlayout.failed_key("q"), rqlayout.canceled_key("q"), rqlayout.executions_key("J"),
            rqlayout.results_key("J"), rqlayout.worker_key("W"), rqlayout.worker_executions_key("W"),
            rqlayout.workers_of_queue_key("q"), rqlayout.WORKERS_KEY, rqlayout.QUEUES_KEY,
            rqlayout.EXECUTION_PREFIX] == [
        "rq:job:J", "rq:queue:q", "rq:wip:q", "rq:finished:q", "rq:failed:q", "rq:canceled:q", "rq:executions:J",
        "rq:results:J", "rq:worker:W", "rq:worker:W:executions", "rq:workers:q", "rq:workers", "rq:queues",
        "rq:execution:"]


# -- an end -----------------------------------------------------------------------------------------

def end_state(r: redis.Redis, job_id: str, queue: str) -> dict[str, Any]:
    """What the end of a job left in RQ's keys, ids, times and texts made comparable: each time stamp
    checked as RQ's format, lifetimes and scores in seconds from now rounded to 10 s."""
    now = time.time()
    job = fields(r, job_id)
    worker = job.pop("worker_name").decode()
    for stamp in STAMPS:
        value = job.pop(stamp).decode()
        assert abs(utcparse(value).timestamp() - now) < 60 and value == utcformat(utcparse(value)), stamp
    for field in ("data", "description"):
        job.pop(field)
    if "exc_info" in job:  # the failure's text: a traceback from RQ, Lambda's error object from us
        assert zlib.decompress(job.pop("exc_info"))
        job["exc_info"] = b"TEXT"
    entries = r.xrange(rqlayout.results_key(job_id))
    assert len(entries) == 1
    result = {k.decode(): v.decode() for k, v in entries[0][1].items()}
    assert result.pop("worker_name") == worker and result.pop("execution_id")
    assert abs(float(result.pop("execution_ended_at")) - now) < 60
    assert float(result.pop("execution_started_at")) <= now
    if "exc_string" in result:
        assert zlib.decompress(base64.b64decode(result.pop("exc_string")))
        result["exc_string"] = "TEXT"
    registries = {}
    for name, key in (("started", rqlayout.started_key(queue)), ("finished", rqlayout.finished_key(queue)),
                      ("failed", rqlayout.failed_key(queue))):
        score = r.zscore(key, job_id)
        registries[name] = None if score is None else round((score - now) / 10)
        assert not [m for m in r.zrange(key, 0, -1) if m.startswith(f"{job_id}:".encode())], "no execution left"
    counts = r.hmget(rqlayout.worker_key(worker), "state", "successful_job_count", "failed_job_count")
    fetched = Job.fetch(job_id, connection=r, serializer=JSONSerializer)
    latest = fetched.latest_result()
    assert latest is not None
    return {
        "job": job, "job ttl": round(r.ttl(rqlayout.job_key(job_id)) / 10), "result": result,
        "result ttl": round(r.ttl(rqlayout.results_key(job_id)) / 10), "registries": registries,
        "executions": (r.exists(rqlayout.executions_key(job_id)), r.keys(f"{rqlayout.EXECUTION_PREFIX}{job_id}:*")),
        "worker": counts, "worker total_working_time": r.hexists(rqlayout.worker_key(worker), "total_working_time"),
        "fetched": (fetched.get_status(), latest.type.name, latest.return_value, latest.exc_string is not None),
    }


def rqs_own_end(r: redis.Redis, fn_name: str, func: str, args: tuple[Any, ...], registry: Registry,
                kind: str = "RequestResponse") -> str:
    """A twin job of ``fn_name``'s queue, enqueued by RQ with lambdalite's options for an event of
    ``kind`` and run start to end by RQ's own ``SimpleWorker.execute_job`` (its start,
    ``perform_job``, ``handle_job_success`` or ``handle_job_failure``); returns its id. The worker
    is deregistered after, as RQ's own is."""
    event = Event(fn_name, {}, invocation_type=kind)
    queue = function_queue(r, fn_name)
    job = queue.enqueue_call(func, args=args, **job_options(registry.get(fn_name), event))
    worker = SimpleWorker([queue], connection=r, name=f"rq-twin-{fn_name}-{kind}", serializer=JSONSerializer)
    taken = Queue.dequeue_any([queue], None, connection=r, serializer=JSONSerializer)
    assert taken is not None and taken[0].id == job.id
    worker.execute_job(taken[0], queue)
    r.srem(rqlayout.workers_of_queue_key(queue.name), worker.key)
    return job.id


def test_a_job_we_take_and_end_is_what_rqs_own_worker_leaves(project: Path, redis_url: str, r: redis.Redis,
                                                             registry: Registry) -> None:
    twin_ok = rqs_own_end(r, "ok", "json.loads", ('{"n": 1}',), registry)  # returns {"n": 1}, as ours will
    twin_fail = rqs_own_end(r, "fail", RUNNER, ({},), registry)  # raises, as ours will
    twin_async = rqs_own_end(r, "quiet", "json.loads", ('{"n": 1}',), registry, kind="Event")  # result_ttl 0
    theirs = {"ok": end_state(r, twin_ok, "lambdalite.ok"), "fail": end_state(r, twin_fail, "lambdalite.fail")}
    assert theirs["ok"]["fetched"] == ("finished", "SUCCESSFUL", {"n": 1}, False)
    assert theirs["fail"]["fetched"] == ("failed", "FAILED", None, True)

    publisher = Publisher(r, registry)
    ok = Event("ok", {"n": 1}, invocation_type="RequestResponse")
    failing = Event("fail", {"n": 1}, invocation_type="RequestResponse")
    unkept = Event("quiet", {"n": 1})  # an asynchronous event: its job is kept by neither
    with Scaler(project) as scaler:
        publisher.publish_many([ok, failing, unkept])
        assert results.wait(r, ok.id, 30).ok, scaler.output()
        assert results.wait(r, unkept.id, 30).ok
        assert not results.wait(r, failing.id, 30).ok
        wait_until(lambda: r.hget(rqlayout.worker_key(fields(r, failing.id)["worker_name"].decode()),
                                  "state") == b"idle", what="the worker idle again")
        ours = {"ok": end_state(r, ok.id, "lambdalite.ok"), "fail": end_state(r, failing.id, "lambdalite.fail")}
    assert ours == theirs
    assert holding(r, twin_async) == holding(r, unkept.id) == [], "nothing of a finished asynchronous job is left"


def holding(r: redis.Redis, job_id: str) -> list[bytes]:
    """RQ's keys that name ``job_id`` or hold it (or one of its executions) as a member."""
    mine = job_id.encode()
    found = list(r.keys(f"rq:*{job_id}*"))
    for key in r.keys("rq:*"):
        kind = r.type(key)
        members = (r.zrange(key, 0, -1) if kind == b"zset" else r.smembers(key) if kind == b"set"
                   else r.lrange(key, 0, -1) if kind == b"list" else [])
        found += [key for m in members if m == mine or m.startswith(mine + b":")]
    return found


# -- jobs RQ enqueues -------------------------------------------------------------------------------

def test_a_job_rqs_enqueue_writes_is_run_or_refused_as_today(project: Path, redis_url: str, r: redis.Redis,
                                                              registry: Registry) -> None:
    queue = function_queue(r, "ok")
    event = Event("ok", {"n": 7}, invocation_type="RequestResponse")
    runs = queue.enqueue_call(RUNNER, args=(event.to_dict(),), **job_options(registry.get("ok"), event))
    marker = project / "pwned"
    foreign = queue.enqueue("os.system", f"touch {marker}")
    with Scaler(project) as scaler:
        outcome = results.wait(r, event.id, 30)
        assert outcome is not None and outcome.ok and outcome.result == {"n": 7}, scaler.output()
        wait_until(lambda: foreign.get_status(refresh=True) == "failed", what="the foreign job refused")
    assert runs.get_status(refresh=True) == "finished" and runs.latest_result().return_value == {"n": 7}
    assert not marker.exists(), "nothing a job names is imported or run"
    assert [e["id"] for e in deadletter.entries(r, "ok")] == [foreign.id]
    assert r.zscore(rqlayout.failed_key("lambdalite.ok"), foreign.id) is not None
    assert "refused job" in scaler.output()


# -- RQ's private names in one module only ----------------------------------------------------------

def rq_private_names(r: redis.Redis) -> set[str]:
    """The single-underscore names of RQ's classes and of their instances' attributes."""
    from rq.executions import Execution, ExecutionRegistry
    from rq.registry import BaseRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
    from rq.results import Result

    queue = Queue("q", connection=r, serializer=JSONSerializer)
    objects: list[Any] = [Job, Queue, SimpleWorker, Execution, ExecutionRegistry, Result, BaseRegistry,
                          StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry, JSONSerializer, queue,
                          Job("j", connection=r, serializer=JSONSerializer), Execution("e", "j", r),
                          SimpleWorker([queue], connection=r, name="w", prepare_for_work=False)]
    return {n for o in objects for n in [*dir(o), *vars(o)] if n.startswith("_") and not n.startswith("__")}


def test_no_module_but_rqlayout_names_rqs_private_attributes(r: redis.Redis) -> None:
    import ast

    from tests.stack import ROOT

    private = rq_private_names(r)
    assert {"_status", "_result", "_prepare_for_queue", "_handle_success", "_state"} <= private
    rq_classes = {"Job", "Queue", "Worker", "SimpleWorker", "BaseWorker", "Execution", "Result"}
    found = []
    for path in sorted(p for d in ("broker", "workers", "sources") for p in (ROOT / d).rglob("*.py")):
        if path == ROOT / "broker" / "rqlayout.py":
            continue
        tree = ast.parse(path.read_text())
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in cls.bases}
            for node in ast.walk(cls):
                node.rq_self = bool(bases & rq_classes)  # type: ignore[attr-defined]  # self is an RQ object
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rq":
                found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}" for a in node.names
                          if a.name.startswith("_")]
            if not isinstance(node, ast.Attribute) or node.attr not in private:
                continue
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not own or getattr(node, "rq_self", False):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert found == []


def test_times_and_data_are_read_as_rq_reads_them(r: redis.Redis) -> None:
    import datetime
    import random

    for sec in [0, 951782400, 4102444799] + [random.randrange(0, 4_102_444_800) for _ in range(200)]:
        at = datetime.datetime.fromtimestamp(sec, datetime.UTC).replace(microsecond=random.randrange(1_000_000))
        stamp = rqlayout.format_time(at)
        assert stamp == utcformat(at) and rqlayout.parse_time(stamp.encode()) == utcparse(stamp) == at
    for bad in (b"yesterday", b"2026-13-01T00:00:00.000000Z", b"2026-01-01T00:00:00Z"):
        assert rqlayout.parse_time(bad) is None
    for argument in ({"n": 1}, {"pad": "x" * COMPRESS_OVER * 2}):
        data = rqlayout.job_data(RUNNER, json.dumps(argument).encode())
        r.hset(rqlayout.job_key("d"), mapping={"data": data, "status": "queued"})
        job = Job.fetch("d", connection=r, serializer=JSONSerializer)
        assert (job.func_name, list(job.args), job.kwargs) == (RUNNER, [argument], {})
        assert rqlayout.call_of(data) == (RUNNER, None, [argument], {})
