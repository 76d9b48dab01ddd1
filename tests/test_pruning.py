"""Pruning RQ's registries and capping the dead letters (broker.pruning), on a real Redis and through
the real scaler and workers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from rq.job import Job

from broker import deadletter, pruning, results, settings
from broker.envelope import Event
from broker.queues import Publisher, queue_name
from broker.registry import load_registry
from broker.settings import load_settings
from tests.stack import Scaler

FINISHED = "rq:finished:" + queue_name("f")
FAILED = "rq:failed:" + queue_name("f")


def _register_queue(r: redis.Redis, function: str = "f") -> None:
    r.sadd("rq:queues", "rq:queue:" + queue_name(function))


def test_expired_members_go_and_the_others_stay(r: redis.Redis) -> None:
    _register_queue(r)
    now = time.time()
    r.zadd(FINISHED, {f"old{i}": now - 2000 + i for i in range(1200)})  # more than two batches
    r.zadd(FINISHED, {f"new{i}": now + 600 for i in range(5)})
    r.hset(Job.key_for("new0"), "status", "finished")
    done = pruning.Pruner(r, load_settings()).prune(now)
    assert done.removed == {FINISHED: 1200}
    assert sorted(r.zrange(FINISHED, 0, -1)) == sorted(f"new{i}".encode() for i in range(5))
    assert r.exists(Job.key_for("new0")), "a member that has not expired keeps its job"


def test_the_failed_registry_keeps_its_newest_jobs_and_drops_the_rest_with_their_keys(r: redis.Redis) -> None:
    _register_queue(r)
    now = time.time()
    for i in range(30):
        job_id = f"j{i:02d}"
        r.zadd(FAILED, {job_id: now + 7 * 86400 + i})
        r.hset(Job.key_for(job_id), "status", "failed")
        r.xadd(f"rq:results:{job_id}", {"type": "2"})
        r.zadd(f"rq:executions:{job_id}", {"e": 1})
    done = pruning.Pruner(r, load_settings(failed_jobs_kept=10)).prune(now)
    assert done.removed == {FAILED: 20}
    assert r.zrange(FAILED, 0, -1) == [f"j{i:02d}".encode() for i in range(20, 30)], "the newest ten stay"
    assert not r.exists(Job.key_for("j00"), "rq:results:j00", "rq:executions:j00")
    assert r.exists(Job.key_for("j29"), "rq:results:j29", "rq:executions:j29") == 3


def test_a_registry_of_another_type_is_moved_aside_not_an_error(r: redis.Redis) -> None:
    _register_queue(r)
    r.set(FINISHED, "junk")
    pruning.Pruner(r, load_settings()).prune(time.time())
    assert not r.exists(FINISHED)
    assert r.keys("lambdalite:quarantine:" + FINISHED + ":*")


def test_queues_that_are_not_lambdalites_are_left_alone(r: redis.Redis) -> None:
    r.sadd("rq:queues", "rq:queue:default")
    r.zadd("rq:finished:default", {"x": 1})
    pruning.Pruner(r, load_settings()).prune(time.time())
    assert r.zcard("rq:finished:default") == 1


def test_dead_letters_over_the_cap_lose_their_oldest(r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    _register_queue(r)
    key = deadletter.dlq_key("f")
    for i in range(120):
        r.hset(key, f"e{i:03d}", json.dumps({"event": None, "error": None, "at": 1000.0 + i}))
    r.hset(key, "garbage", "not json")  # counts as the oldest
    pruner = pruning.Pruner(r, load_settings(dead_letters_kept=100))
    done = pruner.prune(time.time())
    assert done.removed == {key: 31}, "cut to nine tenths of the cap"
    left = {k.decode() for k in r.hkeys(key)}
    assert left == {f"e{i:03d}" for i in range(30, 120)}
    assert "f: 21 dead letter(s) over LAMBDALITE_DEAD_LETTERS_KEPT=100; the 31 oldest dropped" in caplog.text
    assert pruner.prune(time.time()).removed == {}, "under the cap nothing more goes"


def test_a_pass_runs_once_per_interval(r: redis.Redis) -> None:
    _register_queue(r)
    pruner = pruning.Pruner(r, load_settings(prune_interval=15))
    assert pruner.step(100.0) is not None
    assert pruner.step(110.0) is None
    r.zadd(FINISHED, {"gone": time.time() - 1})
    done = pruner.step(115.0)
    assert done is not None and done.removed == {FINISHED: 1}


HANDLER = "def handler(event, context):\n    return {'n': event.get('n')}\n"


@pytest.mark.timeout(300)
def test_3000_synchronous_invokes_leave_no_member_a_minute_after_its_score(
        project: Path, redis_url: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The leak as it was seen: every synchronous invoke left a member in RQ's finished registry for
    ever. With results kept 5 s, the real scaler's pruning (every 15 s) must leave no member more than
    a minute past its score, and then none at all."""
    (project / "quick.py").write_text(HANDLER)
    (project / "lambdalite.toml").write_text('[functions.f]\nhandler = "quick.handler"\nmax_concurrency = 2\n')
    monkeypatch.setenv("LAMBDALITE_SYNC_RESULT_TTL", "5")
    settings.current.cache_clear()  # this process publishes: it reads the lifetime as a new process would
    try:
        publisher = Publisher(r, load_registry(project / "lambdalite.toml"))
        with Scaler(project, LAMBDALITE_SYNC_RESULT_TTL="5") as scaler:
            most = 0

            def check() -> None:  # at any moment: no member a minute past its score
                nonlocal most
                assert r.zcount(FINISHED, "-inf", time.time() - 60) == 0, "a member stayed a minute past its score"
                most = max(most, r.zcard(FINISHED))

            pending: set[str] = set()
            for chunk in range(30):
                events = [Event(function="f", payload={"n": chunk * 100 + i}, invocation_type="RequestResponse")
                          for i in range(100)]
                publisher.publish_many(events)
                pending |= {e.id for e in events}
                while len(pending) > 200:  # callers waiting for their results, as synchronous callers do
                    pending -= set(results.wait_any(r, list(pending)[:500], 5))
                    check()
            deadline = time.monotonic() + 180
            while pending:
                assert time.monotonic() < deadline, "invokes did not finish"
                pending -= set(results.wait_any(r, list(pending)[:500], 5))
                check()
            assert most >= 200, "synchronous jobs are kept in RQ's finished registry a while"
            last = max((score for _, score in r.zrange(FINISHED, 0, -1, withscores=True)), default=0.0)
            while time.time() < last + 60 and r.zcard(FINISHED):
                check()
                time.sleep(1)
            assert r.zcard(FINISHED) == 0
            assert not r.keys("rq:job:*"), "the jobs' hashes expired with them"
            assert "Traceback" not in scaler.output()
    finally:
        settings.current.cache_clear()


def test_the_views_of_scalers_that_died_without_a_word_go(r: redis.Redis) -> None:
    _register_queue(r)
    r.hset("lambdalite:scaler:f", mapping={"live.1": "{}", "killed.2": "{}"})
    r.set("lambdalite:scaler-alive:live.1", 1, ex=30)
    done = pruning.Pruner(r, load_settings()).prune(time.time())
    assert done.removed == {"lambdalite:scaler:f": 1}
    assert r.hkeys("lambdalite:scaler:f") == [b"live.1"]
